"""Our chunk output kernel (GDN_FWD_O=1; train_gpt_gdn.build_fwd_o_kernel via tools/kernels/fwd_o.py) against FLA's
chunk_fwd_o as the state op calls it, on the study's micro-batch shapes (8 heads, dk 42, dv 84; q, k
l2-normalised, g chunk-local cumulative from the layer's decay, states h and v_new random, bf16 as in training):
the output's relative difference from FLA's, ms per call (one CUDA graph of --iters calls) and the ratio ours /
FLA's, warm and cold (each call after a write of --flush-mib MiB, whose own time is subtracted), our autotune
pick made at that shape, and each of our configs checked against FLA's output (`fwd_o_config` lines); first, on
the small --reference-shape, both against the float64 reference (on the CPU).

    python3 tools/gpu/bench_fwd_o.py [--shapes 2x32768,3x16384,6x8192] [--iters 20] [--reference-shape 1x2048]

Prediction and outcome: PERF_NOTES, v30 section.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.checks import graph_ms  # noqa: E402
from tools.gpu.bench_dqkwg import make_inputs as dqkwg_inputs  # noqa: E402
from tools.gpu.bench_recurrence_tiles import bench_ours_vs_fla  # noqa: E402


def make_inputs(B: int, T: int, seed: int, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> dict:
    """The output kernel's inputs: bench_dqkwg's, less the gradients."""
    x = dqkwg_inputs(B, T, seed, device, dtype)
    return {n: x[n] for n in ("q", "k", "v_new", "h", "g", "scale")}


def main(argv=None, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, timer=graph_ms) -> int:
    """The bench (device, dtype and timer other than the defaults only for its CPU test)."""
    return bench_ours_vs_fla("fwd_o", ("o",), make_inputs, __doc__, argv, device, dtype, timer)


if __name__ == "__main__":
    sys.exit(main())
