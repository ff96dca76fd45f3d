"""Our chunk output kernel (GDN_FWD_O=1; train_gpt_gdn.build_fwd_o_kernel via tools/kernels/fwd_o.py) against FLA's
chunk_fwd_o as the state op calls it, on the study's micro-batch shapes (8 heads, dk 42, dv 84; q, k
l2-normalised, g chunk-local cumulative from the layer's decay, states h and v_new random, bf16 as in training):
the output's relative difference from FLA's, ms per call (one CUDA graph of --iters calls) and the ratio ours /
FLA's, warm and cold (each call after a write of --flush-mib MiB, whose own time is subtracted), our autotune
pick made at that shape, and each of our configs checked against FLA's output (`fwd_o_config` lines); first, on
the small --reference-shape, both against the float64 reference (on the CPU).

    python3 tools/gpu/bench_fwd_o.py [--shapes 2x32768,3x16384,6x8192] [--iters 20] [--reference-shape 1x2048]

Prediction: PERF_NOTES, v30 candidate section.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.checks import fla_tuned_per_process, graph_ms, rel  # noqa: E402
from tools.gpu.bench_dqkwg import make_inputs as dqkwg_inputs  # noqa: E402
from tools.gpu.bench_recurrence_tiles import (kernel_bench_args, kernel_bench_header, kernel_bench_parser,  # noqa: E402
                                              pick_at_this_shape, print_reference_check, warm_cold_ms)
from tools.gpu.bench_wy_bwd import each_config  # noqa: E402


def make_inputs(B: int, T: int, seed: int, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> dict:
    """The output kernel's inputs: bench_dqkwg's, less the gradients."""
    x = dqkwg_inputs(B, T, seed, device, dtype)
    return {n: x[n] for n in ("q", "k", "v_new", "h", "g", "scale")}


def main(argv=None, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, timer=graph_ms) -> int:
    """The bench (device, dtype and timer other than the defaults only for its CPU test)."""
    a, shapes, (B, T) = kernel_bench_args(kernel_bench_parser(__doc__), argv)
    if not kernel_bench_header("bench_fwd_o", a, device):
        return 2
    fla_tuned_per_process()
    from tools.kernels import fwd_o as fo
    x = make_inputs(B, T, a.seed, device, dtype)
    ref = fo.reference(**{n: (t.cpu() if torch.is_tensor(t) else t) for n, t in x.items()})
    print_reference_check(B, T, ("o",), (fo.fwd_o(**x),), (fo.fla_path(**x),), (ref,))
    flush = torch.empty(a.flush_mib * 2**20, dtype=torch.uint8, device=device)
    flush_ms = timer(flush.zero_, iters=a.iters)
    tuner = fo.kernels["fwd_o"]
    rows = []
    for B, T in shapes:
        x = make_inputs(B, T, a.seed, device, dtype)
        f_out = fo.fla_path(**x)
        for name, out in each_config(tuner, lambda: fo.fwd_o(**x)):
            print(f"fwd_o_config shape:{B}x{T} config:{name} max_rel_diff:{rel(out.float(), f_out.float()):.3e}",
                  flush=True)
        o_out, pick = pick_at_this_shape(tuner, lambda: fo.fwd_o(**x))  # after each_config: the pick timed below
        err = rel(o_out.float(), f_out.float())
        f_ms, f_cold = warm_cold_ms(timer, lambda: fo.fla_path(**x), flush, flush_ms, a.iters)
        o_ms, o_cold = warm_cold_ms(timer, lambda: fo.fwd_o(**x), flush, flush_ms, a.iters)
        rows.append((B, T, f_ms, o_ms, f_cold, o_cold, err, pick))
        print(f"{B}x{T}: fla {f_ms:.3f} ms, ours {o_ms:.3f} ms ({o_ms / f_ms:.3f}x); cold L2: fla {f_cold:.3f}, "
              f"ours {o_cold:.3f} ({o_cold / f_cold:.3f}x); rel diff {err:.1e}; our pick {pick}", flush=True)
    for B, T, f_ms, o_ms, f_cold, o_cold, err, pick in rows:
        print(f"fwd_o shape:{B}x{T} fla_ms:{f_ms:.4f} ours_ms:{o_ms:.4f} ratio:{o_ms / f_ms:.4f} "
              f"fla_cold_ms:{f_cold:.4f} ours_cold_ms:{o_cold:.4f} cold_ratio:{o_cold / f_cold:.4f} "
              f"max_rel_diff:{err:.3e} ours_pick:{pick}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
