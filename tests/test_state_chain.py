"""The hybrid's own state recurrences (train_gpt_gdn.build_state_kernels, GDN_STATE_CHAIN=1, through
tools/kernels/state_chain.py): the two GDN state recurrences as a chunk-parallel part and a one-product chain,
on the CPU under Triton's interpreter against a float64 step-by-step reference and against fla-core 0.6.0's own
chunk_gated_delta_rule_fwd_h / bwd_dhu on the same inputs (fp32, so that both are exact to rounding): lengths that
are not a multiple of the chunk, one chunk, head dims that are not powers of two, several sequences and heads, fast
and slow decay; compiled for sm_90 (every chain config), and the chain's step with B_c loaded one step ahead.
On a GPU: tools/gpu/bench_state_chain.py."""

from __future__ import annotations

import textwrap

from test_fla_interpreted import INTERP_PATCHES, require_fla
from test_triton_sm90_compile import SM90_HELPER
from test_triton_conv import run_with_triton

CHECK = INTERP_PATCHES + textwrap.dedent("""
    sys.path.insert(0, sys.argv[-1])
    from tools.checks import rel
    from tools.kernels import state_chain as sc
    from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_bwd_dhu, chunk_gated_delta_rule_fwd_h
    from fla.ops.utils import chunk_local_cumsum
    from fla.ops.utils.constant import RCP_LN2
    torch.manual_seed(int(sys.argv[2]))
    for B, T, H, K, V, decay in ((1, 256, 2, 16, 32, 0.1), (2, 300, 1, 12, 24, 0.5), (1, 200, 3, 20, 40, 2.0),
                                 (1, 50, 1, 8, 16, 0.3)):  # the last: one chunk (the chain's prefetch reloads it)
        q, k, w = (torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1) for _ in range(3))
        u, do, dv = (torch.randn(B, T, H, V) for _ in range(3))
        g = chunk_local_cumsum(-torch.rand(B, T, H) * decay, chunk_size=64, scale=RCP_LN2)  # as the state op
        scale = K ** -0.5
        states = (B, -(-T // 64), H, K, V)
        ref = sc.reference(q, k, w, u, g, do, dv, scale)
        h_f, v_f, _ = chunk_gated_delta_rule_fwd_h(k=k, w=w, u=u, g=g, initial_state=None, output_final_state=False,
                                                   chunk_size=64)
        dh_f, _, dv2_f = chunk_gated_delta_rule_bwd_dhu(q=q, k=k, w=w, g=g, h0=None, dht=None, do=do, dv=dv,
                                                        scale=scale, chunk_size=64)
        # one chain, then chains of 1, 2 and 3 chunks (GDN_CHAIN_SEGMENT: the last segment shorter where it does
        # not divide, one segment where it is the whole length)
        for segment in (0, 1, 2, 3):
            h, v_new = sc.fwd_h(k, w, u, g, segment=segment)
            dh, dv2 = sc.bwd_dhu(q, k, w, g, do, dv, scale, segment=segment)
            ours = (h, v_new, dh, dv2)
            assert all(torch.isfinite(t).all() for t in ours)
            assert [tuple(t.shape) for t in ours] == [states, u.shape, states, dv.shape]
            for name, a, r, f in zip(("h", "v_new", "dh", "dv2"), ours, ref, (h_f, v_f, dh_f, dv2_f)):
                e_ref, e_fla = rel(a.double(), r), rel(a, f)
                print(B, T, H, K, V, decay, segment, name, f"vs fp64 {e_ref:.1e} vs fla {e_fla:.1e}")
                assert e_ref < 1e-5 and e_fla < 1e-5, (name, segment, e_ref, e_fla)
        # each config of the chunk-parallel part held alone (v31: value tiles of 64 or 128 in the grid, the first
        # tile's program also forming A_c; v32: the tile the fastest axis, the backward's later tiles without k),
        # where the autotuner above may have picked either
        prep, kept = sc.kernels["prep"], sc.kernels["prep"].configs
        for cfg in kept:
            prep.configs = [cfg]
            prep.cache.clear()
            ours = (*sc.fwd_h(k, w, u, g), *sc.bwd_dhu(q, k, w, g, do, dv, scale))
            for name, a, r in zip(("h", "v_new", "dh", "dv2"), ours, ref):
                e_ref = rel(a.double(), r)
                print(B, T, H, K, V, decay, "prep", cfg, name, f"vs fp64 {e_ref:.1e}")
                assert e_ref < 1e-5, (name, str(cfg), e_ref)
        prep.configs = kept
        prep.cache.clear()
    print("ok")
""")


def test_state_chain_matches_reference_and_fla():
    require_fla()
    r = run_with_triton(CHECK, "0")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-4000:]


HAND = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[-1])
    from tools.kernels.state_chain import reference
    k, w, u = (torch.tensor(x).view(1, 2, 1, 1) for x in ([2.0, 3.0], [0.5, 0.25], [1.0, -1.0]))
    q, do, dv = k.clone(), u.clone(), torch.tensor([4.0, 5.0]).view(1, 2, 1, 1)
    g = torch.tensor([-1.0, -2.0]).view(1, 2, 1)
    h, v_new, dh, dv2 = reference(q, k, w, u, g, do, dv, scale=1.0, chunk=1)
    print(h.flatten().tolist(), v_new.flatten().tolist(), dh.flatten().tolist(), dv2.flatten().tolist())
""")


def test_reference_recurrence_by_hand():
    """The float64 reference worked by hand: two chunks of one row (chunk=1), one head, K = V = 1, log2 decays
    g = (-1, -2). Forward: h_0 = 0, v_new_0 = u_0 = 1, h_1 = 2^-1 h_0 + k_0 v_new_0 = 2, v_new_1 = u_1 - w_1 h_1 =
    -1.5. Backward: dh_1 = 0 (after the last chunk), dv2_1 = dv_1 = 5, dh_0 = 2^-2 dh_1 + q_1 2^-2 do_1 - w_1 dv2_1
    = -0.75 - 1.25 = -2, dv2_0 = dv_0 + k_0 dh_0 = 4 - 4 = 0."""
    r = run_with_triton(HAND, interpret=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split("\n")[0] == "[0.0, 2.0] [1.0, -1.5] [-2.0, 0.0] [0.0, 5.0]", r.stdout


BENCH_CHECK = INTERP_PATCHES + textwrap.dedent("""
    sys.path.insert(0, sys.argv[-1])
    from tools.gpu.bench_recurrence_tiles import make_recurrence_inputs
    from tools.gpu.bench_state_chain import compare
    x = make_recurrence_inputs(1, 192, 0, device="cpu", dtype=torch.float32)  # the study's heads and head dims
    by_segment = compare(x, with_fp64=True, segments=(0, 2))  # one chain; segments of 2 chunks and 1
    assert set(by_segment) == {0, 2}
    for segment, errs in by_segment.items():
        print(segment, errs)
        assert set(errs) == {"h", "v_new", "dh", "dv2"}
        assert all(max(e) < 1e-5 for e in errs.values()), errs
    print("ok")
""")


def test_bench_tool_compares_with_fla_and_float64():
    """tools/gpu/bench_state_chain.py's comparison (the part of it that does not time) on the study's head shapes
    (8 heads, dk 42, dv 84), fp32 on the CPU: ours (one chain and in segments), FLA's and float64 agree."""
    require_fla()
    r = run_with_triton(BENCH_CHECK, "0")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-4000:]


SM90 = SM90_HELPER + textwrap.dedent("""
    from tools.kernels import state_chain as sc
    ptr = lambda names, t: {n: t for n in names}  # noqa: E731
    shape = dict(H=8, K=42, V=84, BK=64)
    prep = {**ptr("k w x do dv".split(), "*bf16"), "g": "*fp32", "A": "*fp32", "Bm": "*fp32", "scale": "fp32",
            "T": "i32", "NT": "i32"}
    chain = {"A": "*fp32", "Bm": "*fp32", "S": "*bf16", "X": "*fp32", "NT": "i32", "NC": "i32"}
    scan = {"X": "*fp32", "Y": "*fp32", "NSEG": "i32"}
    epi = {**ptr("X S base".split(), "*bf16"), "g": "*fp32", "out": "*bf16", "T": "i32", "NT": "i32"}
    for backward in (False, True):
        for cfg in sc.kernels["prep"].configs:  # every config it may pick
            used = compile_sm90(sc.kernels["prep"].fn, prep, dict(shape, BT=64, BACKWARD=backward, IEEE=False,
                                                                   **cfg.kwargs),
                                num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            print("sm90 prep", cfg, backward, used)
            assert " 0 bytes spill stores" in used, (cfg, backward, used)
        print("sm90 epilogue", backward, compile_sm90(sc.kernels["epilogue"], epi, dict(shape, BT=64, BV=64,
                                                                                     BACKWARD=backward, IEEE=False)))
        used = compile_sm90(sc.kernels["scan"], scan, dict(shape, BV=32, REVERSE=backward, IEEE=False))
        print("sm90 scan", backward, used)
        assert " 0 bytes spill stores" in used, used  # 3xTF32 on tensor cores; "ieee" spilled 14 KB a thread
    for cfg in sc.kernels["chain"].configs:  # every config the autotuner may pick, both directions, every mode
        for reverse in (False, True):
            for mode in (0, 1, 2):  # one chain; a segment's map [e | M] over V + K columns; a segment from its start
                used = compile_sm90(sc.kernels["chain"].fn, chain,
                                    dict(shape, W=84 + 42 * (mode == 1), REVERSE=reverse, IEEE=False, MODE=mode,
                                         **cfg.kwargs), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                print("sm90 chain", cfg, reverse, mode, used)
    print("ok")
""")


def test_kernels_compile_for_hopper():
    """What only the GPU compiler refuses (a dot's shapes or precision, a layout's lowering): the three kernels,
    every chain config, compiled for sm_90 and assembled by ptxas on this machine (no GPU)."""
    r = run_with_triton(SM90, interpret=False)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-4000:]
    assert r.stdout.count("sm90 chain") == 108 and r.stdout.count("sm90 prep") == 4
    assert r.stdout.count("sm90 scan") == 2


PREFETCH = SM90_HELPER + textwrap.dedent("""
    import re
    from tools.kernels import state_chain as sc
    const = dict(H=8, K=42, V=84, BK=64, BV=16, IEEE=False)
    sig = {"A": "*fp32", "Bm": "*fp32", "S": "*bf16", "X": "*fp32", "NT": "i32", "NC": "i32"}
    for reverse, mode in ((False, 0), (True, 0), (False, 1), (True, 2)):
        ir = build_sm90(sc.kernels["chain"].fn, sig, dict(const, W=84 + 42 * (mode == 1), REVERSE=reverse,
                                                          MODE=mode)).asm["ttgir"]
        body = ir[ir.index("scf.for"):]
        body = body[:body.index("scf.yield")]
        body += ir[ir.index("scf.yield", ir.index("scf.for")):].split("\\n")[0]
        loads = re.findall(r"(%[\\w]+) = tt\\.load ", body)
        uses = {x: [ln.split()[0] for ln in body.splitlines()
                    if re.search(re.escape(x) + r"\\b", ln) and not ln.strip().startswith(x + " =")] for x in loads}
        print(reverse, uses)
        assert len(loads) == 1, loads  # B (A goes through async copies)
        assert all(u == ["scf.yield"] for u in uses.values()), uses  # used only by the next step
        assert "warp_group_dot " in body and "async_copy_global_to_local" in body
    print("ok")
""")


def test_chain_loads_b_one_step_ahead():
    """The chain kernel's step (v23): compiled for sm_90, its loop's one register load (B_c; A_c goes through
    Triton's pipelined async copies) is used only by the loop's yield, i.e. by the next step, so its latency is
    not in the step's dependent path; the product is a wgmma. Both directions, and the segment modes."""
    r = run_with_triton(PREFETCH, interpret=False)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-4000:]


def test_bench_picks_each_kernel_at_each_shape():
    """The benches time every kernel with its autotune pick made at the shape timed, as a training run makes its
    own: a pick kept from another shape (same key: the keys hold no length) is dropped first."""
    from types import SimpleNamespace

    from tools.gpu.bench_recurrence_tiles import pick_at_this_shape

    small = SimpleNamespace(kwargs={"BV": 16}, num_warps=2, num_stages=2)  # a triton.Config's fields
    large = SimpleNamespace(kwargs={"BV": 64}, num_warps=4, num_stages=3)

    class Tuner:  # Triton's Autotuner as far as the benches use it: run() picks only for a key not yet tuned
        def __init__(self):
            self.cache, self.best_config = {}, None

        def run(self, T):
            key = (8, 42, 84)  # head count and dims, as FLA's and our keys: no T
            if key not in self.cache:
                self.cache[key] = small if T <= 2048 else large
            self.best_config = self.cache[key]
            return T

    tuner = Tuner()
    assert pick_at_this_shape(tuner, lambda: tuner.run(2048)) == (2048, "BV16_w2_s2")
    tuner.run(32768)  # without the helper: the 2048 pick again
    assert tuner.best_config is small
    assert pick_at_this_shape(tuner, lambda: tuner.run(32768)) == (32768, "BV64_w4_s3")


def test_bench_names_the_config_that_faults(monkeypatch):
    """each_config on CUDA waits for each config's launch, so a fault (CUDA reports it at the next synchronising
    call, as the v30 bench's illegal access surfaced) is raised naming its config, and the tuner's configs are
    restored; on the CPU nothing is waited for. torch.cuda.synchronize is a stand-in that faults on its 2nd call."""
    from types import SimpleNamespace

    import pytest
    import torch

    from tools.gpu import bench_recurrence_tiles as bench

    configs = [SimpleNamespace(kwargs={"BV": bv}, num_warps=4, num_stages=1) for bv in (32, 64, 128)]
    tuner = SimpleNamespace(configs=configs, cache={})
    waits = []

    def synchronize():
        waits.append(len(waits))
        if len(waits) == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    assert [n for n, _ in bench.each_config(tuner, lambda: 1)] == ["BV32_w4_s1", "BV64_w4_s1", "BV128_w4_s1"]
    assert waits == []  # the CPU: no waiting
    with pytest.raises(RuntimeError, match="our config BV64_w4_s1: RuntimeError: CUDA error: an illegal memory"):
        bench.each_config(tuner, lambda: 1, "cuda")
    assert tuner.configs is configs and waits == [0, 1]
    waits[:] = [0]  # the next wait faults
    with pytest.raises(RuntimeError, match="FLA's path at 2x32768: RuntimeError: CUDA error"):
        bench.wait_or_name("cuda", "FLA's path at 2x32768")
