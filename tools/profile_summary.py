"""GPU time per training step by kind of kernel, from a kernel table written by tools/profile_script.py --out
(torch.profiler's key_averages table): attention (cuDNN/flash), the GDN kernels (FLA's, and the conv's: FLA's
in v3, the hybrid's own Triton kernels from v4), matmuls, inductor's Triton kernels, aten elementwise/copies,
other. Op-level rows (aten::, gdn_repro::, the profiler's step and
optimiser markers, inductor's graph-call markers) are skipped and a kernel listed twice (a Triton kernel's launcher and the kernel itself) is
counted once, so the kinds add up to the GPU's busy time (of the rows in the table: a table cut at a row limit
undercounts; tools/profile_script.py writes every row since the v3 session, the v2 tables hold the top 200).

    python3 tools/profile_summary.py TABLE.txt [TABLE.txt ...] --steps 2
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

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


def summarize(table: str, steps: int) -> dict[str, float]:
    """kind -> GPU ms per step from one key_averages table's 'Self CUDA' column."""
    out: dict[str, float] = {}
    for name, ms, _ in kernel_rows(table):
        kind = kind_of(name)
        out[kind] = out.get(kind, 0.0) + ms / steps
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="+")
    p.add_argument("--steps", type=int, required=True, help="training steps the table recorded (--active)")
    a = p.parse_args(argv)
    if a.steps < 1:
        p.error("--steps must be >= 1")
    for path in a.tables:
        if not Path(path).is_file():
            p.error(f"table {path}: no such file")
        try:
            kinds = summarize(Path(path).read_text(encoding="utf-8"), a.steps)
        except ValueError as e:
            p.error(f"table {path}: {e}")
        print(f"== {path} (GPU ms per training step)")
        for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:26s} {ms:8.1f}")
        print(f"  {'total':26s} {sum(kinds.values()):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
