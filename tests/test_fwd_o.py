"""Our kernel for the chunk output (train_gpt_gdn.build_fwd_o_kernel, GDN_FWD_O=1, through tools/kernels/fwd_o.py),
on the CPU under Triton's interpreter: against a float64 reference and against the kernel it replaces, fla-core
0.6.0's chunk_fwd_o, on the same fp32 inputs (the study's head dims, lengths that are not a multiple of the chunk,
several sequences and heads, slow and fast decay, both precision paths); compiled for sm_90 in every autotune
config; its GPU bench end to end."""

from __future__ import annotations

import re
import textwrap

from test_fla_interpreted import INTERP_PATCHES, require_fla
from test_triton_sm90_compile import SM90_HELPER
from test_triton_conv import run_with_triton
from test_wy_bwd import bench_main

CHECK = INTERP_PATCHES + textwrap.dedent("""
    sys.path.insert(0, sys.argv[-1])
    from tools.checks import rel
    from tools.kernels import fwd_o as fo
    for B, T, H, K, V, decay in ((1, 130, 2, 42, 84, 0.5), (2, 300, 1, 12, 24, 2.0), (1, 50, 1, 8, 16, 0.1),
                                 (1, 64, 3, 20, 40, 1.0)):
        x = fo.inputs(B, T, H, K, V, decay, seed=int(sys.argv[2]))
        ref, fla = fo.reference(**x), fo.fla_path(**x)
        for ieee in (True, False):  # False: the bf16 path's code (its casts) on fp32
            o = fo.fwd_o(**x, ieee=ieee)
            assert o.shape == x["v_new"].shape and torch.isfinite(o).all()
            e_ref, e_fla = rel(o.double(), ref), rel(o, fla)
            print(B, T, H, K, V, decay, ieee, f"vs fp64 {e_ref:.1e} vs fla {e_fla:.1e}")
            assert e_ref < 1e-5 and e_fla < 1e-5, (ieee, e_ref, e_fla)
    x = fo.inputs(1, 64, 1, 80, 16)
    try:  # beyond one key tile: refused by name, before any launch
        fo.fwd_o(**x)
        raise SystemExit("K=80 accepted")
    except ValueError as e:
        assert "needs K <= 64" in str(e) and "K=80" in str(e), e
    print("ok")
""")


def test_fwd_o_matches_reference_and_fla():
    require_fla()
    r = run_with_triton(CHECK, "0")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-4000:]


SM90 = SM90_HELPER + textwrap.dedent("""
    import re
    from tools.kernels import fwd_o as fo
    kern = fo.kernels["fwd_o"]
    sig = {**{n: "*bf16" for n in "q k v h o".split()}, "g": "*fp32", "scale": "fp32", "T": "i32"}
    for cfg in kern.configs:  # every config the autotuner may pick
        const = dict(H=8, K=42, V=84, BT=64, BK=64, IEEE=False, **cfg.kwargs)
        used = compile_sm90(kern.fn, sig, const, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                            maxnreg=cfg.maxnreg)
        print("sm90 fwd_o", cfg, used)
        ir = build_sm90(kern.fn, sig, const, cfg.num_warps, cfg.num_stages, cfg.maxnreg).asm["ttgir"]
        assert not re.search(r"= tt.trans .*tensor<[0-9x]+x(bf16|f16), #mma", ir)  # FLA issue 640's pattern
    print("ok")
""")


def test_kernel_compiles_for_hopper():
    """The kernel at the study's head dims in every autotune config, compiled for sm_90 and assembled by ptxas on
    this machine (no GPU), without a 16-bit transpose in a product's result layout (FLA issue 640's pattern)."""
    r = run_with_triton(SM90, interpret=False)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-4000:]
    assert r.stdout.count("sm90 fwd_o") == 11  # not BV32 with 4 warps and 1 stage (faults on an H200)
    assert not re.search(r"sm90 fwd_o BV: 32, num_warps: 4, .*num_stages: 1,", r.stdout), r.stdout


def test_bench_tool_runs_end_to_end():
    """tools/gpu/bench_fwd_o.py's main() on the CPU (interpreter, fp32, FLA's kernel as the other side, a wall-clock
    timer): the reference-shape check, every config of ours against FLA's output, the machine-readable lines."""
    require_fla()
    r = run_with_triton(bench_main("bench_fwd_o"), "0")
    assert r.returncode == 0 and "rc 0" in r.stdout, r.stdout[-3000:] + r.stderr[-4000:]
    lines = r.stdout.splitlines()
    checks = [ln for ln in lines if ln.startswith("check 1x64 o:")]
    configs = [ln for ln in lines if ln.startswith("fwd_o_config shape:1x128 ")]
    result = [ln for ln in lines if ln.startswith("fwd_o shape:1x128 ")]
    assert len(checks) == 1 and len(configs) == 11 and len(result) == 1, r.stdout[-3000:]
    assert all(float(ln.split("max_rel_diff:")[1].split()[0]) < 1e-5 for ln in configs + result), r.stdout[-3000:]
    assert float(checks[0].split("ours vs fp64 ")[1].split(",")[0]) < 1e-5, checks
