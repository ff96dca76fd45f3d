"""Our kernel for the backward of the gated delta rule's WY representation (train_gpt_gdn.build_wy_kernel,
GDN_WY_BWD=1, through tools/kernels/wy_bwd.py), on the CPU under Triton's interpreter: against a float64 reference
by autograd through the forward (A = (I + L)^-1 built from k, beta, g) and against the path it replaces, fla-core
0.6.0's prepare_wy_repr_bwd plus the state op's two adds and reverse chunk-local cumsum, on the same fp32 inputs:
the study's head dims (42 / 84: two value tiles, padded key tile), lengths that are not a multiple of the chunk,
one partial chunk, several sequences and heads, slow and fast decay; the reference worked by hand; compiled for
sm_90 in every autotune config. On a GPU: tools/gpu/bench_wy_bwd.py."""

from __future__ import annotations

import textwrap

from test_fla_interpreted import INTERP_PATCHES, require_fla
from test_triton_sm90_compile import SM90_HELPER
from test_triton_conv import run_with_triton

CHECK = INTERP_PATCHES + textwrap.dedent("""
    sys.path.insert(0, sys.argv[-1])
    from tools.checks import rel
    from tools.kernels import wy_bwd as wy
    for B, T, H, K, V, decay in ((1, 130, 2, 42, 84, 0.5), (2, 300, 1, 12, 24, 2.0), (1, 50, 1, 8, 16, 0.1),
                                 (1, 64, 3, 20, 40, 1.0)):
        x = wy.inputs(B, T, H, K, V, decay, seed=int(sys.argv[2]))
        ref = wy.reference(x["k"], x["v"], x["beta"], x["g"], x["dw"], x["du"], x["dk_in"], x["dg_in"])
        fla = wy.fla_path(**x)
        for ieee in (True, False):  # False: the bf16 path's code (its casts, M rounded) on fp32 inputs
            ours = wy.wy_bwd(**x, ieee=ieee)
            assert [tuple(a.shape) for a in ours] == [tuple(x[n].shape) for n in ("k", "v", "beta", "g")]
            assert ours[3].dtype == torch.float32 and all(torch.isfinite(a).all() for a in ours)
            for name, a, r, f in zip(("dk", "dv", "db", "dg"), ours, ref, fla):
                e_ref, e_fla, e_fla_ref = rel(a.double(), r), rel(a, f), rel(f.double(), r)
                print(B, T, H, K, V, decay, ieee, name, f"vs fp64 {e_ref:.1e} vs fla {e_fla:.1e} "
                      f"(fla vs fp64 {e_fla_ref:.1e})")
                assert e_ref < 1e-5 and e_fla < 1e-5, (name, ieee, e_ref, e_fla)
    try:  # beyond one key tile: refused by name, before any launch
        wy.wy_bwd(**wy.inputs(1, 64, 1, 80, 16))
        raise SystemExit("K=80 accepted")
    except ValueError as e:
        assert "needs K <= 64" in str(e) and "K=80" in str(e), e
    # the training log's autotune_picks line: both kernels that ran, each with a pick from its own config list;
    # a dead weakref.proxy among the process's objects (as on the H200, where isinstance on one raised
    # ReferenceError and ended the run after its timed steps) is passed over
    import weakref
    class Gone: pass
    gone = Gone(); dead = [weakref.proxy(gone)]; del gone
    picks = dict(p.split("=", 1) for p in wy.script.autotune_picks().split())
    ours = [wy.script.config_name(c) for c in wy.kernels["wy_bwd"].configs]
    print("picks:", picks)
    assert set(picks[wy.script.__name__ + ".wy_bwd_kernel"].split("/")) <= set(ours), (picks, ours)
    fla_kernel = picks["gated_delta_rule.wy_fast.prepare_wy_repr_bwd_kernel"]
    assert fla_kernel and fla_kernel not in ours, picks  # FLA's configs have no BV of ours
    # and an autotuner it cannot read makes the line say so instead of ending the run before its export
    from triton.runtime.autotuner import Autotuner
    class Unreadable(Autotuner): pass
    odd = object.__new__(Unreadable)  # no cache, no base_fn
    line = wy.script.autotune_picks()
    assert line.startswith("unavailable (AttributeError: "), line
    del odd
    print("ok")
""")


def test_wy_bwd_matches_reference_and_fla():
    require_fla()
    r = run_with_triton(CHECK, "0")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-4000:]


HAND = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[-1])
    from tools.kernels.wy_bwd import wy_forward
    t = lambda *x: torch.tensor(x, dtype=torch.float64).view(1, len(x), 1, 1)  # noqa: E731
    k, v = t(1.0, 2.0), t(3.0, 4.0)
    beta, g = t(0.5, 0.25)[..., 0], t(0.0, -1.0)[..., 0]
    w, u, A = wy_forward(k, v, beta, g)
    print(w.flatten().tolist(), u.flatten().tolist(), A[0, :, 0, :2].flatten().tolist(), A.shape[-1])
""")


def test_reference_forward_by_hand():
    """The float64 forward that the reference differentiates, worked by hand: one chunk of two rows, one head,
    K = V = 1, k = (1, 2), v = (3, 4), beta = (0.5, 0.25), g = (0, -1) (log2). L_10 = beta_1 k_1 k_0 2^(g_1 - g_0)
    = 0.25, A = (I + L)^-1 = [[1, 0], [-0.25, 1]]; beta 2^g k = (0.5, 0.25) -> w = (0.5, -0.125 + 0.25 = 0.125);
    beta v = (1.5, 1) -> u = (1.5, -0.375 + 1 = 0.625); A stored as FLA does, 64 columns a row."""
    r = run_with_triton(HAND, interpret=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split("\n")[0] == "[0.5, 0.125] [1.5, 0.625] [1.0, 0.0, -0.25, 1.0] 64", r.stdout


SM90 = SM90_HELPER + textwrap.dedent("""
    import re
    from tools.kernels import wy_bwd as wy
    kern = wy.kernels["wy_bwd"]
    sig = {**{n: "*bf16" for n in "k v beta A dw du dk_in dk dv db".split()}, "g": "*fp32", "dg_in": "*fp32",
           "dg": "*fp32", "T": "i32"}
    for cfg in kern.configs:  # every config the autotuner may pick
        const = dict(H=8, K=42, V=84, BT=64, BK=64, IEEE=False, **cfg.kwargs)
        used = compile_sm90(kern.fn, sig, const, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                            maxnreg=cfg.maxnreg)
        print("sm90 wy_bwd", cfg, used)
        regs = int(used.split("Used ")[1].split()[0])
        assert regs <= (cfg.maxnreg or 255), used  # the cap took
        # FLA issue 640's pattern, which Triton 3.4-3.7.0 miscompiles on Hopper: a 16-bit copy of a product's
        # result (MMA layout) transposed (to feed another product)
        ir = build_sm90(kern.fn, sig, const, cfg.num_warps, cfg.num_stages, cfg.maxnreg).asm["ttgir"]
        trans = [ln.split(":", 1)[1] for ln in ir.splitlines() if "= tt.trans " in ln]
        assert trans and not [t for t in trans if re.search(r"tensor<[0-9x]+x(bf16|f16), #mma", t)], trans
    print("ok")
""")


def test_kernel_compiles_for_hopper():
    """What only the GPU compiler refuses (a dot's shapes or operand types, a layout's lowering): the kernel at the
    study's head dims in every autotune config, compiled for sm_90 and assembled by ptxas on this machine (no GPU),
    within each config's register cap; and none of its transposes takes a 16-bit tensor in a product's result
    layout, the pattern of FLA issue 640 (Triton 3.4-3.7.0 on Hopper computes such a product wrong)."""
    r = run_with_triton(SM90, interpret=False)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-4000:]
    assert r.stdout.count("sm90 wy_bwd") == 8


BENCH = INTERP_PATCHES + textwrap.dedent("""
    sys.path.insert(0, sys.argv[-1])
    from tools.checks import rel
    from tools.gpu import bench_wy_bwd as bench
    from tools.kernels import wy_bwd as wy
    x = bench.make_inputs(1, 130, 0, device="cpu", dtype=torch.float32)  # the interpreter: fp32 products
    assert all(torch.isfinite(t).all() for t in x.values()) and x["A"].shape == (1, 130, 8, 64)
    ref = wy.reference(*(x[n] for n in ("k", "v", "beta", "g", "dw", "du", "dk_in", "dg_in")))
    ours, pick = bench.pick_at_this_shape(wy.kernels["wy_bwd"], lambda: wy.wy_bwd(**x))
    fla = wy.fla_path(**x)
    for name, o, f, r in zip(bench.NAMES, ours, fla, ref):
        print(name, rel(o.double(), r), rel(f.double(), r))
        assert rel(o.double(), r) < 1e-5 and rel(f.double(), r) < 1e-5, name
    print(pick)
    tuner = wy.kernels["wy_bwd"]
    configs = tuner.configs
    tuner.configs = configs[:2]  # the interpreter runs a config in minutes: two of them show the loop
    per_config = bench.each_config(tuner, lambda: wy.wy_bwd(**x))
    assert [n for n, _ in per_config] == [wy.script.config_name(c) for c in configs[:2]]
    assert tuner.configs == configs[:2]  # restored
    assert all(rel(o, f) < 1e-5 for _, outs in per_config for o, f in zip(outs, fla))
    tuner.configs = configs
    dk0 = x["dk_in"].clone()
    wy.fla_path(**x, inplace=True)  # the timed form adds into dk_in, as the state op does
    assert rel(x["dk_in"], fla[0]) < 1e-6 and rel(dk0, fla[0]) > 1e-3
    print("ok")
""")


def test_bench_tool_inputs_and_check():
    """tools/gpu/bench_wy_bwd.py's inputs (FLA's own intra-chunk forward for A, in the state op's dtypes) and its
    comparison, on the CPU: ours, FLA's path and the float64 reference agree on them (fp32 here), the pick is named,
    and the timed FLA path adds in place as the state op does."""
    require_fla()
    r = run_with_triton(BENCH, "0")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-4000:]
    assert "BV32_w4_s2" in r.stdout, r.stdout[-2000:]


def test_gdn_check_names_the_wy_paths():
    """tools/check_gdn_fla.py's state-op paths ending in -wy run our WY backward on top of the path they extend."""
    from tools.check_gdn_fla import chain_setting
    assert chain_setting("state-op-wy") == ("0", 0) and chain_setting("state-op-wv") == ("0", 0)
    assert chain_setting("state-op-chain-seg-wy") == chain_setting("state-op-chain-seg") == ("1", 3)


def bench_main(module: str) -> str:
    """A check script that runs tools/gpu/MODULE.py's main() on the CPU: the interpreter, fp32, the first autotune
    config at each call (the others kept for its per-config loop), a wall-clock timer in place of CUDA graphs."""
    return INTERP_PATCHES + textwrap.dedent(f"""
        import time
        sys.path.insert(0, sys.argv[-1])
        from tools.gpu import {module} as bench

        def first_config_kept(self, *a, **kw):  # the first config, without dropping the others for later calls
            kept, self.configs = self.configs, self.configs[:1]
            try:
                return run(self, *a, **kw)
            finally:
                self.configs = kept
        autotuner.Autotuner.run = first_config_kept

        def timer(fn, iters):  # wall ms of one call (the interpreter has no CUDA graphs)
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3

        rc = bench.main(["--shapes", "1x128", "--reference-shape", "1x64", "--iters", "1", "--flush-mib", "1"],
                        device="cpu", dtype=torch.float32, timer=timer)
        print("rc", rc)
    """)



def test_bench_tool_runs_end_to_end():
    """tools/gpu/bench_wy_bwd.py's main() on the CPU (interpreter, fp32, a wall-clock timer in place of CUDA graphs):
    it checks on the reference shape, checks every config of ours against FLA's path and prints the machine-readable
    lines, with ours agreeing with FLA's at every config."""
    require_fla()
    r = run_with_triton(bench_main("bench_wy_bwd"), "0")
    assert r.returncode == 0 and "rc 0" in r.stdout, r.stdout[-3000:] + r.stderr[-4000:]
    lines = r.stdout.splitlines()
    checks = [ln for ln in lines if ln.startswith("check 1x64 ")]
    configs = [ln for ln in lines if ln.startswith("wy_bwd_config shape:1x128 ")]
    result = [ln for ln in lines if ln.startswith("wy_bwd shape:1x128 ")]
    assert len(checks) == 4 and len(configs) == 8 and len(result) == 1, r.stdout[-3000:]
    assert all(float(ln.split("max_rel_diff:")[1].split()[0]) < 1e-5 for ln in configs + result), r.stdout[-3000:]
    assert "fla_kernel_ms:" in result[0] and "ours_pick:BV" in result[0]
