"""FLA's two GDN state recurrences (fla-core 0.6.0: chunk_gated_delta_rule_fwd_h and _bwd_dhu, the hybrid's
latency-bound chains) timed per launch config, against the config FLA's own autotuner picks.

Each kernel is one program per (sequence, head, BV value columns), walking all T/64 chunks in order, so at 32k
(2 x 32768 per micro-step, 8 heads) only 32-48 programs run on 132 SMs. FLA tunes BV over {32, 64}; a narrower
value tile (BV = 16) gives more, shorter-per-step programs. This tool measures, for the study's micro-batch
shapes, every config of --bv x --warps x --stages (the autotuner's config list replaced by that one config) and
prints ms per call (one CUDA graph of --iters calls), the ratio to FLA's pick, and each output's relative
difference from FLA's pick's (h, v_new / dh, dv2: a tile choice must not change the result beyond fp32 order).
Inputs are fresh random q, k, v, g, beta (check_gdn_fla's generator) taken through FLA's own intra-chunk forward.

    python3 tools/gpu/bench_recurrence_tiles.py [--shapes 2x32768,3x16384,6x8192] [--bv 16,32,64]
        [--warps 2,4] [--stages 1,2,3] [--iters 20]
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.checks import fla_tuned_per_process, graph_ms, positive_ints, rel  # noqa: E402
from tools.gpu.cuda_model import load_script_file  # noqa: E402

fla_tuned_per_process()
# a triton.Config's name, as the training run's autotune_picks line writes it
REPO = Path(__file__).resolve().parents[2]
config_name = load_script_file(REPO / "train_gpt_gdn.py", "train_gpt_gdn_tiles").config_name

H, DK, DV, C = 8, 42, 84, 64  # the hybrid's GDN heads, key / value head dims (SPEC.md), FLA's chunk


def parse_shapes(parser: argparse.ArgumentParser, text: str, option: str = "--shapes") -> list[tuple[int, int]]:
    """BxT pairs, e.g. 2x32768,6x8192; T a multiple of 64 (FLA's chunk)."""
    shapes = []
    for item in text.split(","):
        b, _, t = item.strip().partition("x")
        if not (b.isdigit() and t.isdigit()) or int(b) < 1 or int(t) < C or int(t) % C:
            parser.error(f"{option} {text!r}: expected comma-separated BxT pairs with T a multiple of {C} (2x32768)")
        shapes.append((int(b), int(t)))
    return shapes


def kernel_bench_parser(doc: str) -> argparse.ArgumentParser:
    """The options of the benches that time a kernel of ours against FLA's at the study's shapes, checking both
    against float64 on a small shape first (bench_state_chain.py, bench_wy_bwd.py); parse with kernel_bench_args."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="2x32768,3x16384,6x8192")
    p.add_argument("--reference-shape", default="1x2048", help="a small BxT also checked against float64")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flush-mib", type=int, default=256, help="the write before each cold call (> the L2's size)")
    return p


def kernel_bench_args(p: argparse.ArgumentParser, argv=None):
    """(args, the timed BxT shapes, the reference BxT) of a kernel_bench_parser, or parser.error before any work."""
    a = p.parse_args(argv)
    shapes = parse_shapes(p, a.shapes)
    ref_shape = parse_shapes(p, a.reference_shape, "--reference-shape")
    if len(ref_shape) != 1:
        p.error(f"--reference-shape {a.reference_shape!r}: expected one BxT pair (it runs in float64 on the CPU)")
    if a.iters < 1:
        p.error(f"--iters {a.iters}: expected a positive integer")
    if a.flush_mib < 1:
        p.error(f"--flush-mib {a.flush_mib}: expected a positive integer")
    return a, shapes, ref_shape[0]


def kernel_bench_header(name: str, a, device: str) -> bool:
    """A kernel bench's first line (card, versions, --iters, --flush-mib); False, after saying why, without CUDA."""
    if device == "cuda" and not torch.cuda.is_available():
        print(f"{name}: needs a CUDA device", file=sys.stderr)
        return False
    import triton
    card = torch.cuda.get_device_name() if device == "cuda" else device
    print(f"card:{card} torch:{torch.__version__} triton:{triton.__version__} iters={a.iters} flush_mib={a.flush_mib}")
    return True


def print_reference_check(B: int, T: int, names, ours, fla, ref) -> None:
    """`check BxT name:` lines: each output of ours against FLA's, and both against the float64 reference (CPU)."""
    for name, o, f, r in zip(names, ours, fla, ref):
        print(f"check {B}x{T} {name}: ours vs fla {rel(o.float(), f.float()):.2e}, ours vs fp64 "
              f"{rel(o.double().cpu(), r):.2e}, fla vs fp64 {rel(f.double().cpu(), r):.2e}")


def warm_cold_ms(timer, call, flush: torch.Tensor, flush_ms: float, iters: int) -> tuple[float, float]:
    """(ms per call, ms per call after a write of `flush` (its own flush_ms subtracted): L2 cold)."""
    return timer(call, iters=iters), timer(lambda: (flush.zero_(), call()), iters=iters) - flush_ms


def make_recurrence_inputs(B: int, T: int, seed: int, device: str = "cuda",
                           dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    from fla.ops.gated_delta_rule.chunk_fwd import chunk_gated_delta_rule_fwd_intra
    from fla.ops.utils import chunk_local_cumsum
    from fla.ops.utils.constant import RCP_LN2

    from tools.check_gdn_fla import make_inputs
    q, k, v, g, b = make_inputs(B, T, H, DK, DV, device, seed)
    q, k = (F.normalize(t, dim=-1).to(dtype) for t in (q, k))
    v, beta = v.to(dtype), (2 * torch.sigmoid(b)).to(dtype)
    g_cum = chunk_local_cumsum(g.float(), chunk_size=C, scale=RCP_LN2)
    w, u, _ = chunk_gated_delta_rule_fwd_intra(k=k, v=v, g=g_cum, beta=beta, chunk_size=C)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    do = torch.randn(B, T, H, DV, device=device, generator=gen).to(dtype)
    dv = torch.randn(B, T, H, DV, device=device, generator=gen).to(dtype)
    return dict(q=q, k=k, w=w, u=u, g=g_cum, do=do, dv=dv)


def kernels(x: dict[str, torch.Tensor]):
    """(name, FLA's autotuned kernel object, the call) of the two recurrences, as the state op calls them."""
    from fla.ops.common import chunk_delta_h as cdh
    scale = DK ** -0.5

    def fwd():
        h, v_new, _ = cdh.chunk_gated_delta_rule_fwd_h(k=x["k"], w=x["w"], u=x["u"], g=x["g"], initial_state=None,
                                                       output_final_state=False, chunk_size=C)
        return h, v_new

    def bwd():
        dh, _, dv2 = cdh.chunk_gated_delta_rule_bwd_dhu(q=x["q"], k=x["k"], w=x["w"], g=x["g"], h0=None, dht=None,
                                                        do=x["do"], dv=x["dv"], scale=scale, chunk_size=C)
        return dh, dv2

    return [("fwd_h", cdh.chunk_gated_delta_rule_fwd_kernel_h_blockdim64, fwd),
            ("bwd_dhu", cdh.chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64, bwd)]


def autotuner(kern):
    """The Autotuner under FLA's @triton.heuristics wrapper (which has no configs of its own)."""
    while not hasattr(kern, "configs"):
        kern = kern.fn
    return kern


def pick_at_this_shape(tuner, call):
    """(call()'s outputs, the name of tuner's pick for them): the pick made anew at these inputs, as a training run
    makes its own, not one kept in memory from another shape (the autotune keys hold no length or batch)."""
    tuner.cache.clear()
    out = call()
    return out, config_name(tuner.best_config)


@contextmanager
def configs_set(tuner, configs):
    """The tuner's config list replaced by `configs` while the block runs (its cache cleared on both sides)."""
    kept = tuner.configs
    tuner.configs = list(configs)
    tuner.cache.clear()
    try:
        yield
    finally:
        tuner.configs = kept
        tuner.cache.clear()


def each_config(tuner, call, device="cpu"):
    """[(config name, call()'s outputs)] with the tuner held to one config at a time: a config that miscompiles
    (Triton on Hopper has done so for kernels of this kind: FLA issues 640, 984) shows here even where the
    autotuner does not pick it at the shapes timed, though a run at another shape might. On CUDA each call is
    waited for, so that a fault is raised naming its config (the v30 bench's illegal access was not)."""
    out = []
    for cfg in list(tuner.configs):
        with configs_set(tuner, [cfg]):
            out.append((config_name(cfg), call()))
            wait_or_name(device, f"our config {config_name(cfg)}")
    return out


def wait_or_name(device, what: str) -> None:
    """On CUDA, wait for the queued kernels and re-raise a fault among them as `what: ...`: CUDA reports an illegal
    access at the next synchronising call, which may belong to another kernel than the one that faulted."""
    if torch.device(device).type != "cuda":
        return
    try:
        torch.cuda.synchronize()
    except Exception as e:
        raise RuntimeError(f"{what}: {type(e).__name__}: {e}") from e


def bench_ours_vs_fla(kernel: str, names: tuple[str, ...], make_inputs, doc: str, argv, device: str,
                      dtype: torch.dtype, timer) -> int:
    """main() of a bench of one of our kernels, tools/kernels/KERNEL.py's KERNEL(), against its fla_path() with
    the same inputs (bench_dqkwg.py, bench_fwd_o.py): on --reference-shape both against its float64 reference();
    then at each shape every config of ours against FLA's outputs (`KERNEL_config` lines), the pick the timing uses,
    warm and cold ms per call and the ratios (`KERNEL shape:` lines, last)."""
    import importlib
    a, shapes, (B, T) = kernel_bench_args(kernel_bench_parser(doc), argv)
    if not kernel_bench_header(f"bench_{kernel}", a, device):
        return 2
    mod = importlib.import_module(f"tools.kernels.{kernel}")
    tuner = mod.kernels[kernel]
    ours = lambda **x: getattr(mod, kernel)(**x)  # noqa: E731
    as_tuple = lambda out: out if isinstance(out, tuple) else (out,)  # noqa: E731
    x = make_inputs(B, T, a.seed, device, dtype)
    ref = mod.reference(**{n: (t.cpu() if torch.is_tensor(t) else t) for n, t in x.items()})
    print_reference_check(B, T, names, as_tuple(ours(**x)), as_tuple(mod.fla_path(**x)), as_tuple(ref))
    flush = torch.empty(a.flush_mib * 2**20, dtype=torch.uint8, device=device)
    flush_ms = timer(flush.zero_, iters=a.iters)
    rows = []
    for B, T in shapes:
        x = make_inputs(B, T, a.seed, device, dtype)
        f_out = as_tuple(mod.fla_path(**x))
        wait_or_name(device, f"FLA's path at {B}x{T}")
        diffs = lambda outs: [rel(o.float(), f.float()) for o, f in zip(as_tuple(outs), f_out)]  # noqa: E731
        for name, outs in each_config(tuner, lambda: ours(**x), device):
            e = diffs(outs)
            print(f"{kernel}_config shape:{B}x{T} config:{name} max_rel_diff:{max(e):.3e} "
                  f"({' '.join(f'{n} {v:.1e}' for n, v in zip(names, e))})", flush=True)
        o_out, pick = pick_at_this_shape(tuner, lambda: ours(**x))  # after each_config: the pick timed below
        errs = diffs(o_out)
        f_ms, f_cold = warm_cold_ms(timer, lambda: mod.fla_path(**x), flush, flush_ms, a.iters)
        o_ms, o_cold = warm_cold_ms(timer, lambda: ours(**x), flush, flush_ms, a.iters)
        rows.append((B, T, f_ms, o_ms, f_cold, o_cold, errs, pick))
        print(f"{B}x{T}: fla {f_ms:.3f} ms, ours {o_ms:.3f} ms ({o_ms / f_ms:.3f}x); cold L2: fla {f_cold:.3f}, "
              f"ours {o_cold:.3f} ({o_cold / f_cold:.3f}x); rel diff "
              f"{' '.join(f'{n} {e:.1e}' for n, e in zip(names, errs))}; our pick {pick}", flush=True)
    for B, T, f_ms, o_ms, f_cold, o_cold, errs, pick in rows:
        print(f"{kernel} shape:{B}x{T} fla_ms:{f_ms:.4f} ours_ms:{o_ms:.4f} ratio:{o_ms / f_ms:.4f} "
              f"fla_cold_ms:{f_cold:.4f} ours_cold_ms:{o_cold:.4f} cold_ratio:{o_cold / f_cold:.4f} "
              f"max_rel_diff:{max(errs):.3e} ours_pick:{pick}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="2x32768,3x16384,6x8192")
    p.add_argument("--bv", default="16,32,64")
    p.add_argument("--warps", default="2,4")
    p.add_argument("--stages", default="1,2,3")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    shapes = parse_shapes(p, a.shapes)
    bvs, warps, stages = (positive_ints(p, o, t) for o, t in (("--bv", a.bv), ("--warps", a.warps),
                                                                 ("--stages", a.stages)))
    if a.iters < 1:
        p.error(f"--iters {a.iters}: expected a positive integer")
    iters = a.iters
    if not torch.cuda.is_available():
        print("bench_recurrence_tiles: needs a CUDA device", file=sys.stderr)
        return 2
    import triton
    configs = [triton.Config({"BV": bv}, num_warps=nw, num_stages=ns) for bv in bvs for nw in warps for ns in stages]
    print(f"card:{torch.cuda.get_device_name()} torch:{torch.__version__} triton:{triton.__version__} "
          f"H={H} dk={DK} dv={DV} chunk={C} iters={iters}")
    rows = []
    for B, T in shapes:
        x = make_recurrence_inputs(B, T, a.seed)
        for name, kern, call in kernels(x):
            kern = autotuner(kern)
            fla_configs = kern.configs
            try:
                out, pick = pick_at_this_shape(kern, call)
                ref = [t.float() for t in out]
                base = graph_ms(call, iters=iters)
                rows.append((name, B, T, f"fla:{pick}", base, 1.0, 0.0))
                for cfg in configs:
                    kern.configs = [cfg]
                    kern.cache.clear()
                    try:
                        err = max(rel(o.float(), r) for o, r in zip(call(), ref))
                        ms = graph_ms(call, iters=iters)
                    except Exception as e:  # a config the compiler refuses (shared memory, registers)
                        print(f"  {name} {B}x{T} {config_name(cfg)}: {type(e).__name__}: {str(e)[:120]}")
                        continue
                    rows.append((name, B, T, config_name(cfg), ms, ms / base, err))
            finally:
                kern.configs = fla_configs
                kern.cache.clear()
            best = min((r for r in rows if r[0] == name and r[1:3] == (B, T)), key=lambda r: r[4])
            print(f"{name} {B}x{T}: FLA's pick {pick} {base:.3f} ms; fastest {best[3]} {best[4]:.3f} ms "
                  f"({best[5]:.3f}x)", flush=True)
    print(f"\n{'kernel':8s} {'shape':8s} {'config':16s} {'ms':>8s} {'ratio':>7s} {'max_rel_diff':>12s}")
    for name, B, T, cfg, ms, ratio, err in rows:
        print(f"{name:8s} {B}x{T:<6d} {cfg:16s} {ms:8.3f} {ratio:7.3f} {err:12.2e}")
    for name, B, T, cfg, ms, ratio, err in rows:
        print(f"recurrence_tile kernel:{name} shape:{B}x{T} config:{cfg} ms:{ms:.4f} ratio:{ratio:.4f} "
              f"max_rel_diff:{err:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
