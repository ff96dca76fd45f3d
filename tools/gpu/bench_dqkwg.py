"""Our dq/dk/dw/dg kernel (GDN_DQKWG=1; train_gpt_gdn.build_dqkwg_kernel via tools/kernels/dqkwg.py) against
FLA's chunk_bwd_dqkwg as the state op calls it (through FLA's backend dispatch: TileLang's kernel on Hopper with
Triton 3.4-3.7.0, FLA's Triton kernel elsewhere), on the study's micro-batch shapes (8 heads, dk 42, dv 84; q, k
l2-normalised, g chunk-local cumulative from the layer's decay, states h and their gradients, v_new, do, dv random,
bf16 as in training): each output's relative difference from FLA's, ms per call (one CUDA graph of --iters calls)
and the ratio ours / FLA's, warm and cold (each call after a write of --flush-mib MiB, whose own time is
subtracted), our autotune pick made at that shape, and each of our configs checked against FLA's outputs
(`dqkwg_config` lines); first, on the small --reference-shape, both against the float64 reference (on the CPU).

    python3 tools/gpu/bench_dqkwg.py [--shapes 2x32768,3x16384,6x8192] [--iters 20] [--reference-shape 1x2048]

Prediction: PERF_NOTES, v29 candidate section.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.checks import graph_ms  # noqa: E402
from tools.gpu.bench_recurrence_tiles import C, DK, DV, H, bench_ours_vs_fla  # noqa: E402

NAMES = ("dq", "dk", "dw", "dg")


def make_inputs(B: int, T: int, seed: int, device: str = "cuda",
                dtype: torch.dtype = torch.bfloat16) -> dict:
    """dqkwg's inputs in the state op's dtypes: q, k (l2-normalised), v_new, do, dv, h, dh in dtype (bf16 in
    training: FLA keeps h and dh in k's dtype); g fp32 (chunk-local cumulative, log2, from the layer's decay)."""
    import torch.nn.functional as F
    from fla.ops.utils import chunk_local_cumsum
    from fla.ops.utils.constant import RCP_LN2

    from tools.check_gdn_fla import make_inputs as gdn_inputs
    q, k, _, g, _ = gdn_inputs(B, T, H, DK, DV, device, seed)
    NT = -(-T // C)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    rnd = lambda *s: torch.randn(*s, device=device, generator=gen).to(dtype)  # noqa: E731
    return dict(q=F.normalize(q, dim=-1).to(dtype), k=F.normalize(k, dim=-1).to(dtype), v_new=rnd(B, T, H, DV),
                g=chunk_local_cumsum(g.float(), chunk_size=C, scale=RCP_LN2), h=rnd(B, NT, H, DK, DV),
                do=rnd(B, T, H, DV), dh=rnd(B, NT, H, DK, DV), dv=rnd(B, T, H, DV), scale=DK ** -0.5)


def main(argv=None, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, timer=graph_ms) -> int:
    """The bench (device, dtype and timer other than the defaults only for its CPU test)."""
    return bench_ours_vs_fla("dqkwg", NAMES, make_inputs, __doc__, argv, device, dtype, timer)


if __name__ == "__main__":
    sys.exit(main())
