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
from tools.checks import fla_tuned_per_process, graph_ms, rel  # noqa: E402
from tools.gpu.bench_recurrence_tiles import (C, DK, DV, H, kernel_bench_args, kernel_bench_header,  # noqa: E402
                                              kernel_bench_parser, pick_at_this_shape, print_reference_check,
                                              warm_cold_ms)
from tools.gpu.bench_wy_bwd import each_config  # noqa: E402

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
    a, shapes, (B, T) = kernel_bench_args(kernel_bench_parser(__doc__), argv)
    if not kernel_bench_header("bench_dqkwg", a, device):
        return 2
    fla_tuned_per_process()
    from tools.kernels import dqkwg as dq
    x = make_inputs(B, T, a.seed, device, dtype)
    ref = dq.reference(**{n: (t.cpu() if torch.is_tensor(t) else t) for n, t in x.items()})
    print_reference_check(B, T, NAMES, dq.dqkwg(**x), dq.fla_path(**x), ref)
    flush = torch.empty(a.flush_mib * 2**20, dtype=torch.uint8, device=device)
    flush_ms = timer(flush.zero_, iters=a.iters)
    tuner = dq.kernels["dqkwg"]
    rows = []
    for B, T in shapes:
        x = make_inputs(B, T, a.seed, device, dtype)
        f_out = dq.fla_path(**x)
        for name, outs in each_config(tuner, lambda: dq.dqkwg(**x)):
            e = [rel(o.float(), f.float()) for o, f in zip(outs, f_out)]
            print(f"dqkwg_config shape:{B}x{T} config:{name} max_rel_diff:{max(e):.3e} "
                  f"({' '.join(f'{n} {v:.1e}' for n, v in zip(NAMES, e))})", flush=True)
        o_out, pick = pick_at_this_shape(tuner, lambda: dq.dqkwg(**x))  # after each_config: the pick timed below
        errs = [rel(o.float(), f.float()) for o, f in zip(o_out, f_out)]
        fla_call, our_call = (lambda: dq.fla_path(**x)), (lambda: dq.dqkwg(**x))
        f_ms, f_cold = warm_cold_ms(timer, fla_call, flush, flush_ms, a.iters)
        o_ms, o_cold = warm_cold_ms(timer, our_call, flush, flush_ms, a.iters)
        rows.append((B, T, f_ms, o_ms, f_cold, o_cold, errs, pick))
        print(f"{B}x{T}: fla {f_ms:.3f} ms, ours {o_ms:.3f} ms ({o_ms / f_ms:.3f}x); cold L2: fla {f_cold:.3f}, "
              f"ours {o_cold:.3f} ({o_cold / f_cold:.3f}x); rel diff "
              f"{' '.join(f'{n} {e:.1e}' for n, e in zip(NAMES, errs))}; our pick {pick}", flush=True)
    for B, T, f_ms, o_ms, f_cold, o_cold, errs, pick in rows:
        print(f"dqkwg shape:{B}x{T} fla_ms:{f_ms:.4f} ours_ms:{o_ms:.4f} ratio:{o_ms / f_ms:.4f} "
              f"fla_cold_ms:{f_cold:.4f} ours_cold_ms:{o_cold:.4f} cold_ratio:{o_cold / f_cold:.4f} "
              f"max_rel_diff:{max(errs):.3e} ours_pick:{pick}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
