"""Which Triton autotune picks differ between training runs: reads the `autotune_picks:` line that a GDN run on
FLA's path logs after its timed steps (module.kernel=config ..., one per autotuner that ran) and prints, for each
kernel whose pick is not the same in every run, the pick of each run. Each run tunes at its first step on a noisy
clock, so two runs of one code can differ in picks; in a step-time A/B this says whether a run-level offset comes
with a pick difference (PERF_NOTES v28).

    python3 tools/compare_picks.py LOG [LOG ...]     # training logs (or ab_session.sh's kept study lines)

Prints `picks: same in all N runs` or one `picks_differ kernel:K` line per kernel, then `picks_digest` per run (the
digest that tools/bench_step_time.py writes into its probe lines as picks:). Exit 2 where a file is missing or
has no autotune_picks line.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

PREFIX = "autotune_picks:"


def picks_digest(value: str) -> str:
    """8 hex digits naming one run's picks (the text after `autotune_picks:`), equal iff the picks are."""
    return hashlib.sha1(value.strip().encode()).hexdigest()[:8]


def last_picks(lines: list[str]) -> str | None:
    """The text after the last `autotune_picks:` line (a rerun appended to a log counts last), or None."""
    found = [ln[len(PREFIX):].strip() for ln in lines if ln.startswith(PREFIX)]
    return found[-1] if found else None


def parse_picks(value: str) -> dict[str, str]:
    """{module.kernel: config} of one autotune_picks value ("none" and its note give {})."""
    return dict(item.split("=", 1) for item in value.split() if "=" in item)


def differing(runs: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """{kernel: {run: pick or "-" where that run did not tune it}} for each kernel not picked alike in every run."""
    kernels = sorted(set().union(*runs.values())) if runs else []
    out = {}
    for k in kernels:
        picks = {name: p.get(k, "-") for name, p in runs.items()}
        if len(set(picks.values())) > 1:
            out[k] = picks
    return out


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    if not paths or any(p.startswith("-") for p in paths):
        print("usage: python3 tools/compare_picks.py LOG [LOG ...]", file=sys.stderr)
        return 2
    values = {}
    for p in paths:
        path = Path(p)
        if not path.is_file():
            print(f"error: LOG {p}: no such file", file=sys.stderr)
            return 2
        v = last_picks(path.read_text(encoding="utf-8", errors="replace").splitlines())
        if v is None:
            print(f"error: LOG {p}: no `{PREFIX}` line (a GDN run on FLA's path logs one after its timed steps)",
                  file=sys.stderr)
            return 2
        values[path.name] = v
    diff = differing({name: parse_picks(v) for name, v in values.items()})
    if not diff:
        print(f"picks: same in all {len(values)} runs")
    for kernel, picks in diff.items():
        print(f"picks_differ kernel:{kernel} " + " ".join(f"{name}={pick}" for name, pick in picks.items()))
    for name, v in values.items():
        print(f"picks_digest {name} picks:{picks_digest(v)} kernels:{len(parse_picks(v))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
