"""Summarise training logs of the baseline (full attention) and hybrid (Gated DeltaNet) scripts.

usage: python3 tools/summarize_logs.py PATH [PATH ...] [--markdown FILE] [--csv FILE] [--plots DIR]

PATH is a log file or a folder (its *.txt / *.log files, not recursive). Reads our logs and the
original study's. Prints markdown to stdout unless --markdown names a file. Tables:
  runs            one row per run (a file may hold several), with status and whether it counts
  configurations  per (model, seq len): mean and min-max range over the counted runs (seeds)
  crossover       baseline vs hybrid per seq len; delta = hybrid - baseline; winner = lower bpb
  probes          benchmark `probe ...` lines, when present
Counting rule (the original's): where one file holds several complete runs of the same
configuration, the last one counts and the earlier ones are listed as superseded. Runs without a
final line (killed, still running, or stopped by an `error:` line) are listed but not counted.

ms/step, three ways:
  overall  final train_time / steps done (what sets the step budget in 600 s)
  steady   median ms/step over intervals between consecutive logged train steps from step 10 on
  early    mean of train_time[s] - train_time[s-1] for s = 6..10 (the original's probe definition)
Final bpb: int8+zlib round-trip val_bpb (the `_exact` line when present).
The original README's ms/step column (baseline 594 / 952 / 2202, hybrid 757 / 847 / 1361 at
8k / 16k / 32k) mixes definitions and cannot be derived exactly from its logs; on those logs
'overall' gives 593.8 / 954.6 / 2219.2 and 761.0 / 842.3 / 1363.6.
--csv FILE writes one row per run; probes, if any, go to FILE's stem + '_probes.csv'.
--plots DIR writes PNGs (needs matplotlib, imported only then).
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tools` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.log_parser import ParsedFile, Probe, Run, parse_file  # noqa: E402

MODEL_ORDER = {"baseline": 0, "hybrid": 1}
README_NOTE = ("The original README's ms/step column (594 / 952 / 2202 baseline, 757 / 847 / 1361 "
               "hybrid) mixes definitions and cannot be derived exactly from its logs.")


# -- selection and grouping ----------------------------------------------------------------------
@dataclass
class Entry:
    run: Run
    role: str  # "counted", "superseded by run N", "not counted (truncated|failed)"

    @property
    def counted(self) -> bool:
        return self.role == "counted"


def assign_roles(files: list[ParsedFile]) -> list[Entry]:
    entries = []
    for pf in files:
        last: dict[tuple, Run] = {}
        for r in pf.runs:
            if r.status == "complete":
                last[(r.model_kind, r.seq_len, r.batch_tokens, r.seed, r.params)] = r
        for r in pf.runs:
            if r.status != "complete":
                role = f"not counted ({r.status.split()[0]})"  # truncated / failed
            else:
                winner = last[(r.model_kind, r.seq_len, r.batch_tokens, r.seed, r.params)]
                role = "counted" if winner is r else f"superseded by run {winner.index}"
            entries.append(Entry(r, role))
    return entries


@dataclass
class Stat:
    mean: float
    lo: float
    hi: float
    n: int


def stat(values) -> Stat | None:
    vals = [v for v in values if v is not None]
    return Stat(statistics.fmean(vals), min(vals), max(vals), len(vals)) if vals else None


@dataclass
class Group:
    model: str
    seq_len: int | None
    runs: list[Run]

    def stat(self, attr: str) -> Stat | None:
        return stat(getattr(r, attr) for r in self.runs)

    @property
    def seeds(self) -> str:
        return ", ".join(str(r.seed) if r.seed is not None else "?" for r in self.runs)

    @property
    def mixed(self) -> str:
        """Name the settings that differ inside the group, so mixed groups are not silent."""
        diffs = [name for name in ("params", "batch_tokens", "card", "torch", "dataset")
                 if len({getattr(r, name) for r in self.runs}) > 1]
        return ", ".join(diffs)


def group_runs(entries: list[Entry]) -> list[Group]:
    groups: dict[tuple, list[Run]] = {}
    for e in entries:
        if e.counted:
            groups.setdefault((e.run.model_kind, e.run.seq_len), []).append(e.run)
    keys = sorted(groups, key=lambda k: (k[1] or 0, MODEL_ORDER.get(k[0], 9), k[0]))
    return [Group(m, s, sorted(groups[(m, s)], key=lambda r: (r.seed is None, r.seed or 0)))
            for m, s in keys]


# -- formatting --------------------------------------------------------------------------------
def fmt(x, digits: int = 1) -> str:
    if x is None:
        return "—"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def fmt_stat(s: Stat | None, digits: int = 1, mean_digits: int | None = None) -> str:
    """One run: the value; several: 'mean (min–max)'."""
    if s is None:
        return "—"
    if s.n == 1:
        return fmt(s.mean, digits)
    return f"{fmt(s.mean, mean_digits or digits)} ({fmt(s.lo, digits)}–{fmt(s.hi, digits)})"


def fmt_steps(s: Stat | None) -> str:
    if s is None:
        return "—"
    mean = str(int(s.mean)) if s.mean == int(s.mean) else f"{s.mean:.1f}"
    return mean if s.n == 1 else f"{mean} ({int(s.lo)}–{int(s.hi)})"


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def short_names(paths: list[str]) -> dict[str, str]:
    """Paths relative to their common folder: short but unambiguous."""
    if not paths:
        return {}
    parents = [os.path.dirname(os.path.abspath(p)) for p in paths]
    root = os.path.commonpath(parents)
    return {p: os.path.relpath(os.path.abspath(p), root) for p in paths}


# -- tables ------------------------------------------------------------------------------------
def runs_tables(entries: list[Entry], names: dict[str, str], counts: dict[str, int]) -> str:
    main, env = [], []
    for e in entries:
        r = e.run
        run_id = f"{r.index}/{counts[r.path]}" if counts[r.path] > 1 else str(r.index)
        ident = [names[r.path], run_id]
        main.append(ident + [r.model_kind, fmt(r.seq_len), fmt(r.batch_tokens), fmt(r.seed),
                             fmt(r.params), fmt(r.steps), fmt(r.ms_overall), fmt(r.ms_steady),
                             fmt(r.ms_early), fmt(r.final_bpb, 4), r.status, e.role])
        mem = (f"{r.peak_alloc_mib} / {r.peak_reserved_mib}" if r.peak_alloc_mib is not None
               else "—")
        env.append(ident + [fmt(r.final_val_loss, 4), mem, fmt(r.compressed_bytes),
                            r.dataset or "—", r.card or "—", r.torch or "—"])
    return "\n\n".join([
        "## Runs",
        md_table(["file", "run", "model", "seq len", "batch tokens", "seed", "params", "steps",
                  "ms/step overall", "ms/step steady", "ms/step early", "final bpb", "status",
                  "counted"], main),
        "### Run details",
        md_table(["file", "run", "final val_loss", "peak MiB alloc / reserved",
                  "int8+zlib bytes", "dataset", "card", "torch"], env),
    ])


def groups_table(groups: list[Group]) -> str:
    rows = []
    for g in groups:
        bpb = g.stat("final_bpb")
        rows.append([g.model, fmt(g.seq_len), str(len(g.runs)), g.seeds, fmt_steps(g.stat("steps")),
                     fmt_stat(g.stat("ms_overall")), fmt_stat(g.stat("ms_steady")),
                     fmt_stat(g.stat("ms_early")), fmt_stat(bpb, 4, mean_digits=5),
                     fmt_stat(g.stat("peak_alloc_mib"), 0), fmt_stat(g.stat("compressed_bytes"), 0),
                     g.mixed or "—"])
    return "\n\n".join([
        "## By configuration (mean, with min–max range over counted runs)",
        md_table(["model", "seq len", "runs", "seeds", "steps", "ms/step overall",
                  "ms/step steady", "ms/step early", "final bpb", "peak MiB alloc",
                  "int8+zlib bytes", "differs within group"], rows),
    ])


def crossover_rows(groups: list[Group]) -> list[dict]:
    """Per seq len: baseline and hybrid groups side by side (None where one is missing)."""
    by_key = {(g.model, g.seq_len): g for g in groups}
    rows = []
    for seq in sorted({g.seq_len for g in groups}, key=lambda s: s or 0):
        b, h = by_key.get(("baseline", seq)), by_key.get(("hybrid", seq))
        row = {"seq_len": seq, "baseline": b, "hybrid": h}
        for attr in ("ms_overall", "steps", "final_bpb"):
            bs, hs = (b.stat(attr) if b else None), (h.stat(attr) if h else None)
            row[attr] = (bs, hs, hs.mean - bs.mean if bs and hs else None)
        delta = row["final_bpb"][2]
        row["winner"] = ("—" if delta is None else "tie" if abs(delta) < 5e-5
                         else "hybrid" if delta < 0 else "baseline")
        rows.append(row)
    return rows


def crossover_table(groups: list[Group]) -> str:
    rows = []
    for row in crossover_rows(groups):
        (bm, hm, dm), (bs, hs, ds), (bb, hb, db) = (row["ms_overall"], row["steps"],
                                                     row["final_bpb"])
        mean = lambda s, d: fmt(s.mean, d) if s else "—"  # noqa: E731
        bpb = lambda s: "—" if s is None else fmt(s.mean, 4 if s.n == 1 else 5)  # noqa: E731
        params = " / ".join(  # differing sizes make a comparison suspect: show them
            ",".join(sorted({fmt(r.params) for r in g.runs})) if g else "—"
            for g in (row["baseline"], row["hybrid"]))
        rows.append([fmt(row["seq_len"]), mean(bm, 1), mean(hm, 1),
                     "—" if dm is None else f"{dm:+.1f}", fmt_steps(bs), fmt_steps(hs),
                     bpb(bb), bpb(hb), "—" if db is None else f"{db:+.4f}", row["winner"],
                     params])
    return "\n\n".join([
        "## Crossover: baseline vs hybrid (means over counted runs)",
        md_table(["seq len", "baseline ms/step", "hybrid ms/step", "Δ ms/step",
                  "baseline steps", "hybrid steps", "baseline bpb", "hybrid bpb",
                  "Δ bpb (hybrid − baseline)", "winner (lower bpb)",
                  "params baseline / hybrid"], rows),
    ])


def probes_table(probes: list[Probe], names: dict[str, str]) -> str:
    # version: the bench's --label, which tells apart the versions an A/B file holds
    rows = [[names[p.path], p.version or "—", p.model, fmt(p.seq_len), fmt(p.batch_tokens), fmt(p.ms_per_step),
             fmt(p.tokens_per_s, 0), fmt(p.mfu, 3), fmt(p.peak_mem_mib, 0), p.card or "—",
             p.torch or "—"] for p in probes]
    return "\n\n".join(["## Probes", md_table(
        ["file", "version", "model", "seq len", "batch tokens", "ms/step", "tokens/s", "MFU", "peak MiB",
         "card", "torch"], rows)])


def problems(files: list[ParsedFile], entries: list[Entry], names: dict[str, str]) -> list[str]:
    """Everything a reader must not miss; also printed to stderr as warnings."""
    out = []
    for pf in files:
        out += [f"{names[pf.path]}: {p}" for p in pf.problems]
        bad = pf.malformed + [m for r in pf.runs for m in r.malformed]
        if bad:
            line, text = min(bad)
            out.append(f"{names[pf.path]}: {len(bad)} malformed log line(s), first at line "
                       f"{line}: {text[:60]!r}")
    for e in entries:
        if e.run.status != "complete":
            out.append(f"{names[e.run.path]}: run {e.run.index} (from line {e.run.first_line}): "
                       f"{e.run.status}")
    return out


def render_markdown(files: list[ParsedFile], entries: list[Entry], groups: list[Group]) -> str:
    names = short_names([pf.path for pf in files])
    counts = {pf.path: len(pf.runs) for pf in files}
    probes = [p for pf in files for p in pf.probes]
    parts = [f"# Log summary\n\n{len(files)} file(s), {len(entries)} run(s), "
             f"{sum(e.counted for e in entries)} counted, {len(probes)} probe line(s)."]
    if entries:
        parts += [runs_tables(entries, names, counts), groups_table(groups),
                  crossover_table(groups)]
    if probes:
        parts.append(probes_table(probes, names))
    issues = problems(files, entries, names)
    superseded = [f"{names[e.run.path]}: run {e.run.index} {e.role}" for e in entries
                  if e.role.startswith("superseded")]
    if issues or superseded:
        parts.append("## Problems and superseded runs\n\n"
                     + "\n".join(f"- {x}" for x in issues + superseded))
    parts.append(
        "## Notes\n\n"
        "- ms/step overall = final train_time / steps (sets the step budget); steady = median "
        "over intervals between logged train steps from step 10 on; early = mean of "
        "train_time[s] − train_time[s−1] for s = 6..10 (the original's probe).\n"
        "- Final bpb = int8+zlib round-trip val_bpb (`final_int8_zlib_roundtrip_exact` when "
        "present). Spread = min–max over counted runs (seeds).\n"
        "- Where one file holds several complete runs of one configuration, the last counts "
        "(the original's rule); truncated runs are listed but not counted.\n"
        f"- {README_NOTE}")
    return "\n\n".join(parts) + "\n"


# -- CSV ---------------------------------------------------------------------------------------
RUN_COLUMNS = ["file", "run", "model", "seq_len", "batch_tokens", "seed", "params", "status",
               "role", "steps", "train_time_ms", "ms_per_step_overall", "ms_per_step_steady",
               "ms_per_step_early", "final_val_loss", "final_val_bpb", "final_is_exact",
               "peak_alloc_mib", "peak_reserved_mib", "int8_zlib_bytes", "dataset", "card",
               "torch", "val_points", "malformed_lines"]


def write_csv(entries: list[Entry], probes: list[Probe], path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(RUN_COLUMNS)
        for e in entries:
            r = e.run
            w.writerow([r.path, r.index, r.model_kind, r.seq_len, r.batch_tokens, r.seed, r.params,
                        r.status, e.role, r.steps, r.train_time_ms, r.ms_overall, r.ms_steady,
                        r.ms_early, r.final_val_loss, r.final_bpb, r.final_exact is not None,
                        r.peak_alloc_mib, r.peak_reserved_mib, r.compressed_bytes, r.dataset,
                        r.card, r.torch, len(r.val), len(r.malformed)])
    written = [path]
    if probes:
        ppath = path.with_name(path.stem + "_probes.csv")
        with ppath.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "line", "version", "model", "seq_len", "batch_tokens", "ms_per_step",
                        "tokens_per_s", "mfu", "peak_mem_mib", "card", "torch"])
            for p in probes:
                w.writerow([p.path, p.line, p.version, p.model, p.seq_len, p.batch_tokens, p.ms_per_step,
                            p.tokens_per_s, p.mfu, p.peak_mem_mib, p.card, p.torch])
        written.append(ppath)
    return written


# -- CLI ---------------------------------------------------------------------------------------
def find_logs(paths: list[str]) -> tuple[list[Path], list[str]]:
    found, missing = [], []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.is_file() and q.suffix in (".txt", ".log"))
        elif p.is_file():
            found.append(p)
        else:
            missing.append(str(p))
    unique = list(dict.fromkeys(q.resolve() for q in found))  # a file named twice counts once
    return unique, missing


def summarize(paths: list[str]) -> tuple[list[ParsedFile], list[Entry], list[Group], list[str]]:
    logs, missing = find_logs(paths)
    files = [parse_file(p) for p in logs]
    entries = assign_roles(files)
    return files, entries, group_runs(entries), missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", metavar="PATH", help="log files or folders of them")
    ap.add_argument("--markdown", type=Path, metavar="FILE",
                    help="write the markdown here instead of stdout")
    ap.add_argument("--csv", type=Path, metavar="FILE", help="write one row per run here")
    ap.add_argument("--plots", type=Path, metavar="DIR", help="write PNG plots into this folder")
    args = ap.parse_args(argv)

    files, entries, groups, missing = summarize(args.paths)
    for m in missing:
        print(f"warning: {m}: no such file or folder", file=sys.stderr)
    names = short_names([pf.path for pf in files])
    for msg in problems(files, entries, names):
        print(f"warning: {msg}", file=sys.stderr)

    text = render_markdown(files, entries, groups)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    else:
        sys.stdout.write(text)
    if args.csv:
        write_csv(entries, [p for pf in files for p in pf.probes], args.csv)
    if args.plots:
        from tools.log_plots import write_plots  # matplotlib only when asked for
        write_plots(entries, groups, args.plots)
    return 0 if files else 1


if __name__ == "__main__":
    sys.exit(main())
