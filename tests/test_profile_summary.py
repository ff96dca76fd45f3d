"""tools/profile_summary.py: GPU time per step by kind from a torch.profiler key_averages table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from tools.profile_summary import kind_of, summarize  # noqa: E402

HEADER = ["Name", "Self CPU %", "Self CPU", "CPU total %", "CPU total", "CPU time avg", "Self CUDA", "Self CUDA %",
          "CUDA total", "CUDA time avg", "# of Calls"]


def table(rows):
    def line(cells):
        return "  ".join(f"{c:>14s}" for c in cells)
    dash = "  ".join("-" * 14 for _ in HEADER)
    body = [line([name] + ["0.00%", "1.000us", "0.00%", "1.000us", "1.000us", t, "1.00%", t, "1.000us", "4"])
            for name, t in rows]
    return "\n".join([dash, line(HEADER), dash] + body + [dash])


def test_kinds_add_up_once_per_kernel():
    rows = [("ProfilerStep*", "1.200s"), ("aten::mm", "100.000ms"),
            ("## Call CompiledFxGraph fcod4vd6nvd3jhzq2vf3voltu6 ##", "558.000ms"),  # graph replays (CUDA graphs) ("gdn_repro::chunk_gdr_bwd", "90.000ms"),
            ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop", "80.000ms"),
            ("chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64", "50.000ms"),
            ("triton_poi_fused_add_mul_0", "30.000ms"), ("triton_poi_fused_add_mul_0", "30.000ms"),
            ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "40.000ms"),
            ("void at::native::elementwise_kernel<128, 4>", "500.000us"), ("some_new_kernel", "2.000ms")]
    got = summarize(table(rows), steps=2)
    assert got == pytest.approx({"attention": 40.0, "FLA (GDN, conv)": 25.0, "inductor (Triton)": 15.0,
                                 "matmul": 20.0, "aten elementwise/copies": 0.25, "other": 1.0})


def test_kind_names():
    assert kind_of("causal_conv1d_fwd_kernel") == "FLA (GDN, conv)"
    assert kind_of("conv_silu_bwd_kernel") == "FLA (GDN, conv)"  # the hybrid's own conv kernels (v4 on)
    assert kind_of("conv_silu_bwd_dz_kernel") == kind_of("conv_silu_bwd_dx_kernel") == "FLA (GDN, conv)"  # v8 on
    assert kind_of("triton_poi_fused_conv_silu_bwd_9") == "inductor (Triton)"  # inductor's, around the op
    assert kind_of("triton_red_fused_sum_3") == "inductor (Triton)"
    # inductor's kernels around the GDN custom ops carry the op's name in theirs
    assert kind_of("triton_per_fused__fused_rms_norm__to_copy_chunk_gdr_bwd_state_mul_silu_sum_view_5") == \
        "inductor (Triton)"
    assert kind_of("chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64") == "FLA (GDN, conv)"


def test_cli_refuses_what_is_not_a_table(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("hello\n")
    r = subprocess.run([sys.executable, str(REPO / "tools/profile_summary.py"), str(bad), "--steps", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "t.txt" in r.stderr and "not a torch.profiler kernel table" in r.stderr
    r = subprocess.run([sys.executable, str(REPO / "tools/profile_summary.py"), str(tmp_path / "none.txt"),
                        "--steps", "2"], capture_output=True, text=True)
    assert r.returncode == 2 and "none.txt: no such file" in r.stderr


def test_our_gdn_kernels_are_their_own_kind():
    for n in ("chain_kernel", "prep_kernel", "wy_bwd_kernel", "dqkwg_kernel", "fwd_o_kernel"):
        assert kind_of(n) == "GDN (ours)", n
    assert kind_of("chunk_fwd_kernel_o") == "FLA (GDN, conv)"  # FLA's, which fwd_o_kernel replaces


def test_diff_per_kernel_and_kind(tmp_path):
    """B - A per kernel (a kernel in one table only counts 0 in the other), the largest gain first, rows under
    --min-ms left out, then per kind and in total."""
    a = table([("ProfilerStep*", "1.000s"), ("kernel_kernel", "40.000ms"), ("chunk_fwd_kernel_o", "10.000ms"),
               ("nvjet_sm90_tst_64x512", "20.000ms"), ("triton_poi_fused_add_0", "2.000ms")])
    b = table([("ProfilerStep*", "1.000s"), ("dqkwg_kernel", "24.000ms"), ("chunk_fwd_kernel_o", "10.000ms"),
               ("nvjet_sm90_tst_64x512", "20.100ms"), ("triton_poi_fused_add_0", "2.000ms")])
    (tmp_path / "a.txt").write_text(a)
    (tmp_path / "b.txt").write_text(b)
    r = subprocess.run([sys.executable, str(REPO / "tools/profile_summary.py"), str(tmp_path / "a.txt"),
                        str(tmp_path / "b.txt"), "--steps", "2", "--diff", "--min-ms", "0.1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()[1:]
    kernels = [ln for ln in lines if ln.startswith("kernel_diff ")]
    assert kernels == ["kernel_diff diff_ms:-20.00 a_ms:20.00 b_ms:0.00 kind:FLA_(GDN,_conv) name:kernel_kernel",
                       "kernel_diff diff_ms:+12.00 a_ms:0.00 b_ms:12.00 kind:GDN_(ours) name:dqkwg_kernel"]
    assert "kind_diff diff_ms:-20.00 a_ms:25.00 b_ms:5.00 kind:FLA_(GDN,_conv)" in lines
    assert "kind_diff diff_ms:+0.05 a_ms:10.00 b_ms:10.05 kind:matmul" in lines
    assert lines[-1] == "total_diff diff_ms:-7.95 a_ms:36.00 b_ms:28.05"


def test_diff_needs_two_tables(tmp_path):
    (tmp_path / "a.txt").write_text(table([("kernel_kernel", "4.000ms")]))
    r = subprocess.run([sys.executable, str(REPO / "tools/profile_summary.py"), str(tmp_path / "a.txt"),
                        "--steps", "2", "--diff"], capture_output=True, text=True)
    assert r.returncode == 2 and "--diff: expected two tables (A B), got 1" in r.stderr
    r = subprocess.run([sys.executable, str(REPO / "tools/profile_summary.py"), str(tmp_path / "a.txt"),
                        str(tmp_path / "a.txt"), "--steps", "2", "--diff", "--min-ms", "-1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--min-ms -1: expected a number >= 0" in r.stderr
