"""The chunk-parallel part of our state recurrences (train_gpt_gdn.build_state_kernels' prep_kernel: each chunk's
A_c and B_c forward, A_c and R_c backward; v31, v32) timed in each of its autotune configs at the study's micro-batch
shapes, against v22-v30's one launch (value tiles of 128, 4 warps; v31 adds 64-column tiles in the grid, v32 makes
the tile the fastest grid axis; 32-column tiles and 8 warps, timed in the thirty-fourth and thirty-fifth sessions,
were slower at every shape).

For each shape and direction: every config's ms per call (one CUDA graph of --iters calls; warm, and L2-cold after a
write of --flush-mib MiB whose own time is subtracted), its ratio to the v30 launch, and its largest relative
difference from that launch's A and B (the products per value column are the same in every config); then the
autotuner's pick at that shape, as a training run makes its own, and the whole fwd_h / bwd_dhu (prep, chain,
epilogue) with the pick against the same with the v30 launch. Inputs: bench_recurrence_tiles' (fresh random q, k,
v, g, beta through FLA's own intra-chunk forward).

    python3 tools/gpu/bench_state_prep.py [--shapes 2x32768,3x16384,6x8192] [--iters 20] [--flush-mib 256]

Lines to read: `prep_config shape:BxT dir:fwd|bwd config:... ms:... cold_ms:... ratio:... max_rel_diff:...` and
`prep_pick shape:BxT dir:... pick:... recurrence_ms:... v30_recurrence_ms:... ratio:...` (last). Prediction:
PERF_NOTES, v31 and v32.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.checks import graph_ms, rel  # noqa: E402
from tools.gpu.bench_recurrence_tiles import (DK, config_name, configs_set, each_config,  # noqa: E402
                                              kernel_bench_args, kernel_bench_header, kernel_bench_parser,
                                              make_recurrence_inputs, pick_at_this_shape, wait_or_name,
                                              warm_cold_ms)

V30 = "BV128_w4_s1"  # v22-v30's launch: one value tile of 128 columns, 4 warps (no loop: stages change nothing)


def prep_calls(x: dict[str, torch.Tensor]):
    """(direction, the prep call, the whole recurrence's call) as fwd_h / bwd_dhu make them."""
    from tools.kernels import state_chain as sc
    scale = DK ** -0.5
    V = x["u"].size(-1)
    return [("fwd", lambda: sc.prep(x["k"], x["w"], x["u"], x["u"], x["u"], x["g"], V, 1.0, False),
             lambda: sc.fwd_h(x["k"], x["w"], x["u"], x["g"])),
            ("bwd", lambda: sc.prep(x["k"], x["w"], x["q"], x["do"], x["dv"], x["g"], V, scale, True),
             lambda: sc.bwd_dhu(x["q"], x["k"], x["w"], x["g"], x["do"], x["dv"], scale))]


def held_to(tuner, name: str):
    """The tuner's configs held to the one named while the block runs, e.g. the v30 launch."""
    match = [c for c in tuner.configs if config_name(c) == name]
    if not match:
        raise ValueError(f"prep_kernel has no config {name} (configs: "
                         f"{', '.join(config_name(c) for c in tuner.configs)})")
    return configs_set(tuner, match)


def compare_configs(x: dict[str, torch.Tensor], device: str = "cpu"):
    """[(direction, config name, max relative difference of A and B from the v30 launch's)] for every config in
    the tuner's list: the bench's check, without timing
    (tests/test_state_prep.py runs it on the CPU under Triton's interpreter)."""
    from tools.kernels import state_chain as sc
    tuner = sc.kernels["prep"]
    rows = []
    for direction, call, _ in prep_calls(x):
        with held_to(tuner, V30):
            ref = [t.clone() for t in call()]
        wait_or_name(device, f"the v30 launch ({direction})")
        for name, outs in each_config(tuner, call, device):
            rows.append((direction, name, max(rel(o, r) for o, r in zip(outs, ref))))
    return rows


def main(argv=None, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, timer=graph_ms) -> int:
    """The bench; device, dtype and timer are for its test on the CPU (interpreter, fp32, a wall-clock timer)."""
    a, shapes, _ = kernel_bench_args(kernel_bench_parser(__doc__), argv)
    if not kernel_bench_header("bench_state_prep", a, device):
        return 2
    from tools.kernels import state_chain as sc
    tuner = sc.kernels["prep"]
    flush = torch.empty(a.flush_mib * 2**20, dtype=torch.uint8, device=device)
    flush_ms = timer(flush.zero_, iters=a.iters)
    configs, picks = [], []
    for B, T in shapes:
        x = make_recurrence_inputs(B, T, a.seed, device, dtype)
        diffs = {(d, n): e for d, n, e in compare_configs(x, device)}
        for direction, call, whole in prep_calls(x):
            with held_to(tuner, V30):
                base, base_cold = warm_cold_ms(timer, call, flush, flush_ms, a.iters)
                whole_v30 = timer(whole, iters=a.iters)
            for cfg in list(tuner.configs):
                name = config_name(cfg)
                with configs_set(tuner, [cfg]):
                    ms, cold = warm_cold_ms(timer, call, flush, flush_ms, a.iters)
                configs.append((B, T, direction, name, ms, cold, ms / base, diffs[(direction, name)]))
                print(f"{B}x{T} {direction} {name}: {ms:.4f} ms ({ms / base:.3f}x the v30 launch's {base:.4f}), "
                      f"cold {cold:.4f} ({cold / base_cold:.3f}x), rel diff {diffs[(direction, name)]:.1e}",
                      flush=True)
            _, pick = pick_at_this_shape(tuner, call)
            whole_ms = timer(whole, iters=a.iters)  # the pick stays in the tuner's cache for these calls
            tuner.cache.clear()
            picks.append((B, T, direction, pick, whole_ms, whole_v30))
    for B, T, direction, name, ms, cold, ratio, err in configs:
        print(f"prep_config shape:{B}x{T} dir:{direction} config:{name} ms:{ms:.4f} cold_ms:{cold:.4f} "
              f"ratio:{ratio:.4f} max_rel_diff:{err:.3e}")
    for B, T, direction, pick, whole_ms, whole_v30 in picks:
        print(f"prep_pick shape:{B}x{T} dir:{direction} pick:{pick} recurrence_ms:{whole_ms:.4f} "
              f"v30_recurrence_ms:{whole_v30:.4f} ratio:{whole_ms / whole_v30:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
