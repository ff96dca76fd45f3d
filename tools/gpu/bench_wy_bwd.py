"""Our WY backward (GDN_WY_BWD=1; train_gpt_gdn.build_wy_kernel via tools/kernels/wy_bwd.py: FLA's
prepare_wy_repr_bwd with the state op's dk / dg adds and reverse chunk-local cumsum in one kernel) against that path
as the state op runs it (FLA's kernel, two in-place adds, FLA's cumsum), on the study's micro-batch shapes (8 heads,
dk 42, dv 84; A, k, v, beta, g from FLA's own intra-chunk forward on fresh random inputs; dw, du, dk, dg random
bf16 / fp32 as dqkwg returns them): each output's relative difference from FLA's path, and ms per call (one CUDA
graph of --iters calls) with the ratio ours / FLA's, warm and cold (each call after a write of --flush-mib MiB,
whose own time is subtracted), each kernel's autotune pick made at that shape (printed), and each of our
kernel's configs checked against FLA's path (`wy_bwd_config` lines); first, on the small --reference-shape, both
against the float64 reference (autograd through the forward, on the CPU).

    python3 tools/gpu/bench_wy_bwd.py [--shapes 2x32768,3x16384,6x8192] [--iters 20] [--reference-shape 1x2048]

Prediction: PERF_NOTES, v28 candidate section.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.checks import fla_tuned_per_process, graph_ms, rel  # noqa: E402
from tools.gpu.bench_recurrence_tiles import (C, DK, DV, H, autotuner, each_config, kernel_bench_args,  # noqa: E402
                                              kernel_bench_header, kernel_bench_parser, pick_at_this_shape,
                                              print_reference_check, wait_or_name, warm_cold_ms)

NAMES = ("dk", "dv", "db", "dg")


def make_inputs(B: int, T: int, seed: int, device: str = "cuda",
                dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The WY backward's inputs in the state op's dtypes: k, v, beta, A (FLA's forward), dw, du, dk_in in dtype
    (bf16 as in training); fp32 g (chunk-local cumulative, log2) and dg_in."""
    import torch.nn.functional as F
    from fla.ops.gated_delta_rule.chunk_fwd import chunk_gated_delta_rule_fwd_intra
    from fla.ops.utils import chunk_local_cumsum
    from fla.ops.utils.constant import RCP_LN2

    from tools.check_gdn_fla import make_inputs as gdn_inputs
    _, k, v, g, b = gdn_inputs(B, T, H, DK, DV, device, seed)
    k, v, beta = F.normalize(k, dim=-1).to(dtype), v.to(dtype), (2 * torch.sigmoid(b)).to(dtype)
    g = chunk_local_cumsum(g.float(), chunk_size=C, scale=RCP_LN2)
    _, _, A = chunk_gated_delta_rule_fwd_intra(k=k, v=v, g=g, beta=beta, chunk_size=C)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    rnd = lambda *s: torch.randn(*s, device=device, generator=gen)  # noqa: E731
    return dict(k=k, v=v, beta=beta, g=g, A=A, dw=rnd(B, T, H, DK).to(dtype), du=rnd(B, T, H, DV).to(dtype),
                dk_in=rnd(B, T, H, DK).to(dtype), dg_in=rnd(B, T, H))


def main(argv=None, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, timer=graph_ms) -> int:
    """The bench (device, dtype and timer other than the defaults only for its CPU test)."""
    a, shapes, (B, T) = kernel_bench_args(kernel_bench_parser(__doc__), argv)
    if not kernel_bench_header("bench_wy_bwd", a, device):
        return 2
    fla_tuned_per_process()
    from fla.ops.gated_delta_rule.wy_fast import prepare_wy_repr_bwd, prepare_wy_repr_bwd_kernel

    from tools.kernels import wy_bwd as wy
    x = make_inputs(B, T, a.seed, device, dtype)
    ref = wy.reference(*(x[n].cpu() for n in ("k", "v", "beta", "g", "dw", "du", "dk_in", "dg_in")))
    print_reference_check(B, T, NAMES, wy.wy_bwd(**x), wy.fla_path(**x), ref)
    flush = torch.empty(a.flush_mib * 2**20, dtype=torch.uint8, device=device)
    flush_ms = timer(flush.zero_, iters=a.iters)
    fla_tuner, our_tuner = autotuner(prepare_wy_repr_bwd_kernel), wy.kernels["wy_bwd"]
    rows = []
    for B, T in shapes:
        x = make_inputs(B, T, a.seed, device, dtype)
        f_out, fla_pick = pick_at_this_shape(fla_tuner, lambda: wy.fla_path(**x))
        wait_or_name(device, f"FLA's path at {B}x{T}")
        for name, outs in each_config(our_tuner, lambda: wy.wy_bwd(**x), device):
            e = [rel(o.float(), f.float()) for o, f in zip(outs, f_out)]
            print(f"wy_bwd_config shape:{B}x{T} config:{name} max_rel_diff:{max(e):.3e} "
                  f"({' '.join(f'{n} {v:.1e}' for n, v in zip(NAMES, e))})", flush=True)
        o_out, our_pick = pick_at_this_shape(our_tuner, lambda: wy.wy_bwd(**x))  # after each_config: the one timed
        errs = [rel(o.float(), f.float()) for o, f in zip(o_out, f_out)]
        fla_call = lambda: wy.fla_path(**x, inplace=True)  # noqa: E731  (as the state op: adds in place)
        our_call = lambda: wy.wy_bwd(**x)  # noqa: E731
        f_ms, f_cold = warm_cold_ms(timer, fla_call, flush, flush_ms, a.iters)
        o_ms, o_cold = warm_cold_ms(timer, our_call, flush, flush_ms, a.iters)
        # FLA's kernel alone: what the tail (two adds, the cumsum) costs beside it, and what the bodies compare at
        k_ms = timer(lambda: prepare_wy_repr_bwd(**{n: x[n] for n in ("k", "v", "beta", "g", "A", "dw", "du")}),
                        iters=a.iters)
        rows.append((B, T, f_ms, k_ms, o_ms, f_cold, o_cold, errs, fla_pick, our_pick))
        print(f"{B}x{T}: fla path {f_ms:.3f} ms (its WY kernel {k_ms:.3f}), ours {o_ms:.3f} ms ({o_ms / f_ms:.3f}x); "
              f"cold L2: fla {f_cold:.3f}, "
              f"ours {o_cold:.3f} ({o_cold / f_cold:.3f}x); rel diff "
              f"{' '.join(f'{n} {e:.1e}' for n, e in zip(NAMES, errs))}; picks: fla {fla_pick}, ours {our_pick}",
              flush=True)
    for B, T, f_ms, k_ms, o_ms, f_cold, o_cold, errs, fla_pick, our_pick in rows:
        print(f"wy_bwd shape:{B}x{T} fla_ms:{f_ms:.4f} fla_kernel_ms:{k_ms:.4f} ours_ms:{o_ms:.4f} "
              f"ratio:{o_ms / f_ms:.4f} "
              f"fla_cold_ms:{f_cold:.4f} ours_cold_ms:{o_cold:.4f} cold_ratio:{o_cold / f_cold:.4f} "
              f"max_rel_diff:{max(errs):.3e} fla_pick:{fla_pick} ours_pick:{our_pick}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
