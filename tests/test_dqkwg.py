"""Our kernel for the chunk backward of q, k, w and g (train_gpt_gdn.build_dqkwg_kernel, GDN_DQKWG=1, through
tools/kernels/dqkwg.py), on the CPU under Triton's interpreter: against a float64 reference by autograd through
each chunk's output and the state it passes on, and against the kernel it replaces, fla-core 0.6.0's Triton
chunk_bwd_dqkwg, on the same fp32 inputs: the study's head dims (42 / 84: value tiles, padded key tile), lengths
that are not a multiple of the chunk, one partial chunk, several sequences and heads, slow and fast decay; the
reference checked against a worked case; compiled for sm_90 in every autotune config without FLA issue 640's
pattern."""

from __future__ import annotations

import textwrap

from test_fla_interpreted import INTERP_PATCHES, require_fla
from test_triton_sm90_compile import SM90_HELPER
from test_triton_conv import run_with_triton
from test_wy_bwd import bench_main

CHECK = INTERP_PATCHES + textwrap.dedent("""
    sys.path.insert(0, sys.argv[-1])
    from tools.checks import rel
    from tools.kernels import dqkwg as dq
    for B, T, H, K, V, decay in ((1, 130, 2, 42, 84, 0.5), (2, 300, 1, 12, 24, 2.0), (1, 50, 1, 8, 16, 0.1),
                                 (1, 64, 3, 20, 40, 1.0)):
        x = dq.inputs(B, T, H, K, V, decay, seed=int(sys.argv[2]))
        ref, fla = dq.reference(**x), dq.fla_path(**x)
        for ieee in (True, False):  # False: the bf16 path's code (its casts, the transposed product) on fp32
            ours = dq.dqkwg(**x, ieee=ieee)
            assert [tuple(a.shape) for a in ours] == [tuple(x[n].shape) for n in ("q", "k", "k", "g")]
            assert ours[3].dtype == torch.float32 and all(torch.isfinite(a).all() for a in ours)
            for name, a, r, f in zip(("dq", "dk", "dw", "dg"), ours, ref, fla):
                e_ref, e_fla, e_fla_ref = rel(a.double(), r), rel(a, f), rel(f.double(), r)
                print(B, T, H, K, V, decay, ieee, name, f"vs fp64 {e_ref:.1e} vs fla {e_fla:.1e} "
                      f"(fla vs fp64 {e_fla_ref:.1e})")
                assert e_ref < 1e-5 and e_fla < 1e-5, (name, ieee, e_ref, e_fla)
    x = dq.inputs(1, 64, 1, 80, 16)
    try:  # beyond one key tile: refused by name, before any launch
        dq.dqkwg(**x)
        raise SystemExit("K=80 accepted")
    except ValueError as e:
        assert "needs K <= 64" in str(e) and "K=80" in str(e), e
    x = dq.inputs(1, 64, 1, 16, 16)
    try:  # states of another shape (one per chunk expected)
        dq.dqkwg(**{**x, "h": x["h"][:, :, :, :8]})
        raise SystemExit("wrong h accepted")
    except ValueError as e:
        assert "(B, T/64, H, K, V)" in str(e), e
    print("ok")
""")


def test_dqkwg_matches_reference_and_fla():
    require_fla()
    r = run_with_triton(CHECK, "0")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-4000:]


HAND = textwrap.dedent("""
    import sys, math, torch
    sys.path.insert(0, sys.argv[-1])
    from tools.kernels.dqkwg import reference
    t = lambda *x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    q, k = t(1.0, 2.0).view(1, 2, 1, 1), t(3.0, 1.0).view(1, 2, 1, 1)
    v, do, dv = t(1.0, 1.0).view(1, 2, 1, 1), t(1.0, 1.0).view(1, 2, 1, 1), t(2.0, 0.5).view(1, 2, 1, 1)
    g = t(0.0, -1.0).view(1, 2, 1)
    h, dh = t(0.5).view(1, 1, 1, 1, 1), t(1.0).view(1, 1, 1, 1, 1)
    out = reference(q, k, v, g, h, do, dh, dv, scale=1.0)
    print(" ".join(f"{x.flatten().tolist()}" for x in out))
""")


def test_reference_by_hand():
    """The float64 reference on one chunk of two rows, K = V = 1, scale 1, g = (0, -1) (log2): o_0 = q_0 h + q_0 k_0
    v_0 = 0.5 + 3 = 3.5, o_1 = 2^-1 q_1 h + q_1 k_0 2^-1 v_0 + q_1 k_1 v_1 = 0.5 + 3 + 2 = 5.5 (do = 1 each);
    h' = 2^-1 h + 2^-1 k_0 v_0 + k_1 v_1 = 0.25 + 1.5 + 1 (dh = 1). dq_0 = h + k_0 v_0 = 3.5, dq_1 = 2^-1 h + 2^-1 k_0
    + k_1 = 0.25 + 1.5 + 1 = 2.75; dk_0 = q_0 + 2^-1 q_1 + 2^-1 (state) = 1 + 1 + 0.5 = 2.5, dk_1 = q_1 + 1 = 3;
    dw = -dv h = (-1, -0.25); dg (log2 units, then / ln 2 = natural units): the terms in g_1 are 2^g_1 (q_1 h + q_1 k_0
    v_0 + h + k_0 v_0) = 0.5 (1 + 6 + 0.5 + 3) = 5.25 -> dL/dg_1 = 5.25 ln 2; in g_0, 2^g_0 q_0 h = 0.5 and
    -2^(g_1 - g_0) (q_1 k_0 v_0 + k_0 v_0) = -0.5 (6 + 3) -> dL/dg_0 = (0.5 - 4.5) ln 2: dg = (-4, 5.25)."""
    r = run_with_triton(HAND, interpret=False)
    assert r.returncode == 0, r.stderr[-3000:]
    got = [[round(v, 9) for v in eval(part + "]")] for part in r.stdout.strip().rstrip("]").split("] ")]
    assert got == [[3.5, 2.75], [2.5, 3.0], [-1.0, -0.25], [-4.0, 5.25]], r.stdout


SM90 = SM90_HELPER + textwrap.dedent("""
    import re
    from tools.kernels import dqkwg as dq
    kern = dq.kernels["dqkwg"]
    sig = {**{n: "*bf16" for n in "q k v h do dq dk dw".split()}, "g": "*fp32", "dh": "*fp32", "dv": "*bf16",
           "dg": "*fp32", "scale": "fp32", "T": "i32"}
    for cfg in kern.configs:  # every config the autotuner may pick
        const = dict(H=8, K=42, V=84, BT=64, BK=64, IEEE=False, **cfg.kwargs)
        used = compile_sm90(kern.fn, sig, const, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                            maxnreg=cfg.maxnreg)
        print("sm90 dqkwg", cfg, used)
        ir = build_sm90(kern.fn, sig, const, cfg.num_warps, cfg.num_stages, cfg.maxnreg).asm["ttgir"]
        trans = [ln.split(":", 1)[1] for ln in ir.splitlines() if "= tt.trans " in ln]
        assert trans and not [t for t in trans if re.search(r"tensor<[0-9x]+x(bf16|f16), #mma", t)], trans
    print("ok")
""")


def test_kernel_compiles_for_hopper():
    """The kernel at the study's head dims in every autotune config, compiled for sm_90 and assembled by ptxas on
    this machine (no GPU); none of its transposes takes a 16-bit tensor in a product's result layout (FLA issue
    640's pattern, which Triton 3.4-3.7.0 on Hopper computes wrong)."""
    r = run_with_triton(SM90, interpret=False)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-4000:]
    assert r.stdout.count("sm90 dqkwg") == 12


def test_gdn_check_names_the_dqkwg_paths():
    """tools/check_gdn_fla.py's state-op paths ending in -dqkwg run our dq/dk/dw/dg kernel on top of the path they
    extend (its chain setting and, for ...-wy-dqkwg, our WY backward too); the switches come back after the block."""
    from tools import check_gdn_fla as check
    assert check.chain_setting("state-op-dqkwg") == ("0", 0)
    assert check.chain_setting("state-op-chain-seg-wy-dqkwg") == check.chain_setting("state-op-chain-seg") == ("1", 3)
    g = check.gdn
    before = g.GDN_SAVE_WV, g.GDN_STATE_CHAIN, g.GDN_CHAIN_SEGMENT, g.GDN_WY_BWD, g.GDN_DQKWG
    assert check.our_kernels("state-op-chain-seg-wy-dqkwg") == ("wy", "dqkwg")
    assert check.our_kernels("state-op-fwdo") == ("fwdo",) and check.our_kernels("state-op-wv") == ()
    assert check.chain_setting("state-op-chain-seg-wy-dqkwg-fwdo") == ("1", 3)
    with check.state_flags(True, ("1", 3), check.our_kernels("state-op-chain-seg-wy-dqkwg")):
        assert (g.GDN_SAVE_WV, g.GDN_STATE_CHAIN, g.GDN_CHAIN_SEGMENT, g.GDN_WY_BWD, g.GDN_DQKWG, g.GDN_FWD_O) == \
            (True, "1", 3, True, True, False)
    assert (g.GDN_SAVE_WV, g.GDN_STATE_CHAIN, g.GDN_CHAIN_SEGMENT, g.GDN_WY_BWD, g.GDN_DQKWG) == before


def test_bench_tool_runs_end_to_end():
    """tools/gpu/bench_dqkwg.py's main() on the CPU (interpreter, fp32, FLA's Triton kernel as the other side, a
    wall-clock timer in place of CUDA graphs): the reference-shape check, every config of ours against FLA's
    outputs, and the machine-readable lines, ours agreeing with FLA's at every config."""
    require_fla()
    r = run_with_triton(bench_main("bench_dqkwg"), "0")
    assert r.returncode == 0 and "rc 0" in r.stdout, r.stdout[-3000:] + r.stderr[-4000:]
    lines = r.stdout.splitlines()
    checks = [ln for ln in lines if ln.startswith("check 1x64 ")]
    configs = [ln for ln in lines if ln.startswith("dqkwg_config shape:1x128 ")]
    result = [ln for ln in lines if ln.startswith("dqkwg shape:1x128 ")]
    assert len(checks) == 4 and len(configs) == 12 and len(result) == 1, r.stdout[-3000:]
    assert all(float(ln.split("max_rel_diff:")[1].split()[0]) < 1e-5 for ln in configs + result), r.stdout[-3000:]
    fp64 = [float(ln.split("ours vs fp64 ")[1].split(",")[0]) for ln in checks]
    assert max(fp64) < 1e-5, checks
    assert "ours_pick:BV32_w4_s1" in result[0], result
