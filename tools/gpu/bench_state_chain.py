"""Our state recurrences (GDN_STATE_CHAIN; train_gpt_gdn.build_state_kernels via tools/kernels/state_chain.py: a
chunk-parallel part + a one-product chain) against FLA's chunk_gated_delta_rule_fwd_h / bwd_dhu as the hybrid's step
runs them (v21's BV=16 configs in FLA's autotuner only for shapes of < 64 recurrence programs, the 32k preset: those
shapes are timed last, after the configs are added), on the study's micro-batch shapes: each output's relative
difference from FLA's, and ms per call (one CUDA graph of --iters calls) with the ratio ours / FLA's, warm (the
calls back to back, inputs left in L2) and cold (each call after a write of --flush-mib MiB, whose own time is
subtracted: in the step the kernels before these leave other data in L2), with each kernel's autotune pick made
at that shape (printed), as a training run makes its own (train_gpt_gdn.import_fla); first, on the small
--reference-shape, both against a float64 evaluation of the same recurrence (it runs on the CPU). Inputs as
tools/gpu/bench_recurrence_tiles.py makes them (fresh random q, k, v, g, beta through FLA's own intra-chunk
forward).

    python3 tools/gpu/bench_state_chain.py [--shapes 2x32768,3x16384,6x8192] [--iters 20]
        [--reference-shape 1x2048] [--flush-mib 256] [--segments 0]

--segments: ours with each chain cut into segments of that many chunks (GDN_CHAIN_SEGMENT; 0 = one chain), each
timed and checked against FLA's. Predictions: PERF_NOTES, v22, v23 and v26 sections.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.checks import graph_ms, positive_ints, rel  # noqa: E402
from tools.gpu.bench_recurrence_tiles import (DK, DV, H, autotuner, kernel_bench_args,  # noqa: E402
                                              kernel_bench_parser, kernels, make_recurrence_inputs,
                                              pick_at_this_shape)


def ours(x: dict[str, torch.Tensor], segment: int = 0):
    from tools.kernels import state_chain as sc
    scale = DK ** -0.5
    return [("fwd_h", lambda: sc.fwd_h(x["k"], x["w"], x["u"], x["g"], segment=segment)),
            ("bwd_dhu", lambda: sc.bwd_dhu(x["q"], x["k"], x["w"], x["g"], x["do"], x["dv"], scale, segment=segment))]


def compare(x: dict[str, torch.Tensor], with_fp64: bool,
            segments: tuple[int, ...] = (0,)) -> dict[int, dict[str, tuple[float, float, float]]]:
    """Per segment length of ours (GDN_CHAIN_SEGMENT, 0: one chain): output name -> (ours vs FLA's, ours vs float64,
    FLA's vs float64) relative differences (the float64 pair NaN without with_fp64): h and v_new of the forward, dh
    and dv2 of the backward. FLA's outputs and the float64 reference are computed once."""
    from tools.kernels import state_chain as sc
    fla = [t for _, _, call in kernels(x) for t in call()]
    ref = sc.reference(*(x[n].cpu() for n in ("q", "k", "w", "u", "g", "do", "dv")), scale=DK ** -0.5) \
        if with_fp64 else [None] * 4
    nan = float("nan")
    fla_vs_ref = [rel(f.double().cpu(), r) if r is not None else nan for f, r in zip(fla, ref)]
    out = {}
    for seg in segments:
        mine = [t for _, call in ours(x, seg) for t in call()]
        out[seg] = {name: (rel(m.float(), f.float()), rel(m.double().cpu(), r) if r is not None else nan, e)
                    for name, m, f, r, e in zip(("h", "v_new", "dh", "dv2"), mine, fla, ref, fla_vs_ref)}
    return out


def main() -> int:
    p = kernel_bench_parser(__doc__)
    p.add_argument("--segments", default="0", help="comma-separated chunks per chain segment (0: one chain)")
    a, shapes, (B, T) = kernel_bench_args(p)
    segments = positive_ints(p, "--segments", a.segments, minimum=0)
    if not torch.cuda.is_available():
        print("bench_state_chain: needs a CUDA device", file=sys.stderr)
        return 2
    import triton

    from tools.kernels import state_chain as sc
    gdn = sc.script  # the script whose kernels ours() times
    print(f"card:{torch.cuda.get_device_name()} torch:{torch.__version__} triton:{triton.__version__} "
          f"iters={a.iters} flush_mib={a.flush_mib}")
    # float64 check of the recurrence itself on a small shape (FLA's semantics, no rounding)
    x = make_recurrence_inputs(B, T, a.seed)
    for seg, errs in compare(x, with_fp64=True, segments=tuple(segments)).items():
        for name, (e_fla, e_ours64, e_fla64) in errs.items():
            print(f"check {B}x{T} segment {seg} {name}: ours vs fla {e_fla:.2e}, ours vs fp64 {e_ours64:.2e}, "
                  f"fla vs fp64 {e_fla64:.2e}")
    flush = torch.empty(a.flush_mib * 2**20, dtype=torch.uint8, device="cuda")
    flush_ms = graph_ms(flush.zero_, iters=a.iters)
    widened = False
    rows = []
    # FLA's configs as the step has them (gdn.prepare_mixers): BV=16 added only below 64 programs, timed last
    for B, T in sorted(shapes, key=lambda bt: bt[0] * H * -(-DV // 32) < 64):
        if B * H * -(-DV // 32) < 64 and not widened:
            why = gdn.widen_recurrence_tiles()
            widened = True
            print(f"fla_bv16:{'added' if why is None else why} (shapes from here on)")
        x = make_recurrence_inputs(B, T, a.seed)
        for i, (name, fla_kernel, fla_call) in enumerate(kernels(x)):
            f_out, fla_pick = pick_at_this_shape(autotuner(fla_kernel), fla_call)
            f_ms = graph_ms(fla_call, iters=a.iters)
            f_cold = graph_ms(lambda: (flush.zero_(), fla_call()), iters=a.iters) - flush_ms
            for seg in segments:
                our_call = ours(x, seg)[i][1]
                o_out, our_pick = pick_at_this_shape(sc.kernels["chain"], our_call)
                errs = [rel(o.float(), f.float()) for o, f in zip(o_out, f_out)]
                o_ms = graph_ms(our_call, iters=a.iters)
                o_cold = graph_ms(lambda: (flush.zero_(), our_call()), iters=a.iters) - flush_ms
                rows.append((name, B, T, seg, f_ms, o_ms, f_cold, o_cold, errs, fla_pick, our_pick))
                print(f"{name} {B}x{T} segment {seg}: fla {f_ms:.3f} ms, ours {o_ms:.3f} ms ({o_ms / f_ms:.3f}x); "
                      f"cold L2: fla {f_cold:.3f}, ours {o_cold:.3f} ({o_cold / f_cold:.3f}x); rel diff "
                      f"{' '.join(f'{e:.1e}' for e in errs)}; picks: fla {fla_pick}, ours {our_pick}", flush=True)
    for name, B, T, seg, f_ms, o_ms, f_cold, o_cold, errs, fla_pick, our_pick in rows:
        print(f"state_chain kernel:{name} shape:{B}x{T} segment:{seg} fla_ms:{f_ms:.4f} ours_ms:{o_ms:.4f} "
              f"ratio:{o_ms / f_ms:.4f} fla_cold_ms:{f_cold:.4f} ours_cold_ms:{o_cold:.4f} "
              f"cold_ratio:{o_cold / f_cold:.4f} max_rel_diff:{max(errs):.3e} fla_pick:{fla_pick} "
              f"ours_pick:{our_pick}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
