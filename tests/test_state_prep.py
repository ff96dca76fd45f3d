"""tools/gpu/bench_state_prep.py (v31, v32: the chunk-parallel part of our state recurrences in each autotune
config) on the CPU under Triton's interpreter: every config's A and B against the v30 launch's, the bench's main()
end to end with a wall-clock timer, and a config name it does not know refused."""

from __future__ import annotations

import textwrap

from test_fla_interpreted import INTERP_PATCHES, require_fla
from test_triton_conv import run_with_triton
from test_wy_bwd import bench_main

COMPARE = INTERP_PATCHES + textwrap.dedent("""
    sys.path.insert(0, sys.argv[-1])
    from tools.gpu import bench_state_prep as bench
    from tools.gpu.bench_recurrence_tiles import make_recurrence_inputs
    from tools.kernels import state_chain as sc
    x = make_recurrence_inputs(2, 200, 0, "cpu", torch.float32)  # 4 chunks, the last partial; dv 84: 2 tiles of 64
    rows = bench.compare_configs(x)
    for row in rows:
        print("compare", *row)
    assert len(rows) == 2 * len(sc.kernels["prep"].configs) == 4, rows
    assert {r[1] for r in rows} == {"BV64_w4_s1", "BV128_w4_s1"}
    assert all(err < 1e-6 for _, _, err in rows), rows
    try:
        with bench.held_to(sc.kernels["prep"], "BV16_w4_s1"):
            pass
    except ValueError as e:
        print("refused:", e)
    # a config of a narrower tile that skipped the value columns past its first tile would differ from v30's
    # (INTERP_PATCHES leave an autotuner its first config from here on: BV64)
    A, B = sc.prep(x["k"], x["w"], x["u"], x["u"], x["u"], x["g"], 84, 1.0, False)
    assert B[..., 64:].abs().max() > 0 and torch.isfinite(A).all() and torch.isfinite(B).all()
    print("ok")
""")


def test_every_config_matches_the_v30_launch():
    require_fla()
    r = run_with_triton(COMPARE, "0")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-4000:]
    assert "refused: prep_kernel has no config BV16_w4_s1 (configs: BV64_w4_s1, BV128_w4_s1)" in r.stdout, \
        r.stdout[-2000:]


def test_bench_tool_runs_end_to_end():
    """main() with shapes 1x128: a line per config and direction (2 x 2), the pick's recurrence against v30's
    (2)."""
    require_fla()
    r = run_with_triton(bench_main("bench_state_prep"), "0")
    assert r.returncode == 0 and "rc 0" in r.stdout, r.stdout[-3000:] + r.stderr[-4000:]
    lines = r.stdout.splitlines()
    configs = [ln for ln in lines if ln.startswith("prep_config shape:1x128 ")]
    picks = [ln for ln in lines if ln.startswith("prep_pick shape:1x128 ")]
    assert len(configs) == 4 and len(picks) == 2, r.stdout[-3000:]
    assert {ln.split("dir:")[1].split()[0] for ln in configs} == {"fwd", "bwd"}
    assert all(float(ln.split("max_rel_diff:")[1].split()[0]) < 1e-6 for ln in configs), r.stdout[-3000:]
    assert all(float(ln.split("ratio:")[1].split()[0]) > 0 for ln in picks), picks
