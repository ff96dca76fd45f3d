"""GPU time per training step by kind of kernel, from a kernel table written by tools/profile_script.py --out
(torch.profiler's key_averages table): attention (cuDNN/flash), the GDN kernels (FLA's, and the conv's: FLA's
in v3, the hybrid's own Triton kernels from v4), matmuls, inductor's Triton kernels, aten elementwise/copies,
other. Op-level rows (aten::, gdn_repro::, the profiler's step and
optimiser markers, inductor's graph-call markers) are skipped and a kernel listed twice (a Triton kernel's launcher and the kernel itself) is
counted once, so the kinds add up to the GPU's busy time (of the rows in the table: a table cut at a row limit
undercounts; tools/profile_script.py writes every row since the v3 session, the v2 tables hold the top 200).

    python3 tools/profile_summary.py TABLE.txt [TABLE.txt ...] --steps 2
    python3 tools/profile_summary.py A.txt B.txt --steps 2 --diff [--min-ms 0.1]   # per kernel, B - A

--diff: each kernel's GPU ms per step in A and in B and B - A, the largest gains first (kernels in one table only
count 0 in the other), then each kind's B - A: where one version's step time went against another's.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# the hybrid's own GDN kernels (train_gpt_gdn.py: the state recurrences' chain kernels, v22 on; the WY backward,
# v28; dq/dk/dw/dg, v29; the chunk output, v30), matched by whole name
OURS = ("prep_kernel", "chain_kernel", "chain_scan_kernel", "epilogue_kernel", "wy_bwd_kernel", "dqkwg_kernel",
        "fwd_o_kernel")
KINDS = (  # first match wins
    ("attention", ("sdpa", "cudnn", "flash_fwd", "flash_bwd", "fmha")),
    ("FLA (GDN, conv)", ("chunk_", "prepare_wy", "recompute_w_u", "kernel_kernel", "solve", "causal_conv1d",
                         "merge_16x16", "l2norm_", "conv_silu_fwd_kernel", "conv_silu_bwd_kernel",
                         "conv_silu_bwd_dz_kernel", "conv_silu_bwd_dx_kernel")),
    ("matmul", ("nvjet", "gemm", "cutlass", "sm90_xmma")),
    ("inductor (Triton)", ("triton_",)),
    ("aten elementwise/copies", ("elementwise_kernel", "reduce_kernel", "copy", "fill")),
)
# Op-level and marker rows; "## Call CompiledFxGraph ... ##" (inductor's graph calls) holds, under CUDA graphs, the
# time of the kernels its replay ran, which are listed again as kernel rows.
SKIP = ("aten::", "gdn_repro::", "ProfilerStep", "Optimizer.", "cuda", "Command Buffer", "## ")
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def kind_of(name: str) -> str:
    if name.startswith("triton_"):  # inductor's kernels, whose names also carry the ops they fused ("chunk_gdr")
        return "inductor (Triton)"
    if name in OURS:
        return "GDN (ours)"
    for kind, keys in KINDS:
        if any(k in name for k in keys):
            return kind
    return "other"


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"not a time: {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def kernel_rows(table: str) -> list[tuple[str, float, int]]:
    """(kernel name, 'Self CUDA' ms over the table, calls) of each kernel row of one key_averages table, each
    kernel once (op-level and marker rows skipped)."""
    lines = table.splitlines()
    header = next((ln for ln in lines if "Self CUDA" in ln and "Name" in ln), None)
    if header is None:
        raise ValueError("no 'Name ... Self CUDA' header: not a torch.profiler kernel table")
    columns = [c.strip() for c in re.split(r"\s{2,}", header.strip())]
    col, calls = columns.index("Self CUDA"), columns.index("# of Calls")
    rows: list[tuple[str, float, int]] = []
    seen: set[str] = set()
    for ln in lines[lines.index(header) + 1:]:
        cells = [c.strip() for c in re.split(r"\s{2,}", ln.strip())]
        if len(cells) != len(columns) or set(ln.strip()) <= {"-", " "} or cells[0].startswith(SKIP) \
                or cells[0] in seen:
            continue
        seen.add(cells[0])
        rows.append((cells[0], to_ms(cells[col]), int(cells[calls])))
    return rows


def per_kernel(table: str, steps: int) -> dict[str, float]:
    """kernel name -> GPU ms per step from one key_averages table's 'Self CUDA' column."""
    return {name: ms / steps for name, ms, _ in kernel_rows(table)}


def by_kind(kernels: dict[str, float]) -> dict[str, float]:
    """kind -> the sum of per_kernel's values of its kernels."""
    out: dict[str, float] = {}
    for name, ms in kernels.items():
        out[kind_of(name)] = out.get(kind_of(name), 0.0) + ms
    return out


def summarize(table: str, steps: int) -> dict[str, float]:
    """kind -> GPU ms per step from one key_averages table's 'Self CUDA' column."""
    return by_kind(per_kernel(table, steps))


def diff_lines(a: dict[str, float], b: dict[str, float], min_ms: float) -> list[str]:
    """Per-kernel (ms per step, as per_kernel's) B - A where |B - A| >= min_ms, the largest gain first, then each
    kind's B - A over every kernel."""
    names = sorted(set(a) | set(b), key=lambda n: (b.get(n, 0.0) - a.get(n, 0.0), n))
    out = [f"kernel_diff diff_ms:{b.get(n, 0.0) - a.get(n, 0.0):+.2f} a_ms:{a.get(n, 0.0):.2f} "
           f"b_ms:{b.get(n, 0.0):.2f} kind:{kind_of(n).replace(' ', '_')} name:{n}"
           for n in names if abs(b.get(n, 0.0) - a.get(n, 0.0)) >= min_ms]
    ka, kb = by_kind(a), by_kind(b)
    out += [f"kind_diff diff_ms:{kb.get(k, 0.0) - ka.get(k, 0.0):+.2f} a_ms:{ka.get(k, 0.0):.2f} "
            f"b_ms:{kb.get(k, 0.0):.2f} kind:{k.replace(' ', '_')}"
            for k in sorted(set(ka) | set(kb), key=lambda k: kb.get(k, 0.0) - ka.get(k, 0.0))]
    ta, tb = sum(a.values()), sum(b.values())
    return out + [f"total_diff diff_ms:{tb - ta:+.2f} a_ms:{ta:.2f} b_ms:{tb:.2f}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="+")
    p.add_argument("--steps", type=int, required=True, help="training steps the table recorded (--active)")
    p.add_argument("--diff", action="store_true", help="two tables A B: each kernel's and kind's B - A")
    p.add_argument("--min-ms", type=float, default=0.1, help="--diff: kernels whose |B - A| is at least this")
    a = p.parse_args(argv)
    if a.steps < 1:
        p.error("--steps must be >= 1")
    if a.diff and len(a.tables) != 2:
        p.error(f"--diff: expected two tables (A B), got {len(a.tables)}")
    if not a.min_ms >= 0:
        p.error(f"--min-ms {a.min_ms:g}: expected a number >= 0")
    tables = []  # each table read and parsed once, all before any output
    for path in a.tables:
        if not Path(path).is_file():
            p.error(f"table {path}: no such file")
        try:
            tables.append(per_kernel(Path(path).read_text(encoding="utf-8"), a.steps))
        except ValueError as e:
            p.error(f"table {path}: {e}")
    if a.diff:
        print(f"== {a.tables[1]} - {a.tables[0]} (GPU ms per training step, B - A)")
        print("\n".join(diff_lines(*tables, a.min_ms)))
        return 0
    for path, kernels in zip(a.tables, tables):
        kinds = by_kind(kernels)
        print(f"== {path} (GPU ms per training step)")
        for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:26s} {ms:8.1f}")
        print(f"  {'total':26s} {sum(kinds.values()):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
