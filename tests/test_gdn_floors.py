"""tools/gdn_floors.py: bytes and FLOPs of each GDN kernel per layer call, beside a profile's times."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from tools.gdn_floors import conv_kernels, gdn_kernels, measured_per_call  # noqa: E402
from tools.profile_summary import summarize  # noqa: E402

PROFILE_32K = REPO / "logs_experiment/profile_v20graphs_hybrid_seq32768_s19_h200.txt"


def test_hand_count_of_the_forward_recurrence():
    # one sequence of one chunk, one head, dk 2, dv 3: read k, w (64 x 2 bf16 each), u (64 x 3), g (64 fp32);
    # write h (one 2 x 3 state) and v_new (64 x 3); FLOPs: w h and k^T v_new, 2 x 64 x 2 x 3 each
    k = {x.name: x for x in gdn_kernels(1, 64, H=1, K=2, V=3)}["chunk_gated_delta_rule_fwd_kernel_h_blockdim64"]
    assert k.bytes == 2 * 64 * 2 * 2 + 64 * 3 * 2 + 64 * 4 + 2 * 3 * 2 + 64 * 3 * 2
    assert k.flops == 2 * (2 * 64 * 2 * 3)
    assert k.chain == 1


def test_costs_scale_with_tokens_and_chains_with_length():
    one = gdn_kernels(1, 32768) + conv_kernels(1, 32768)
    two = gdn_kernels(2, 32768) + conv_kernels(2, 32768)
    for a, b in zip(one, two):
        assert b.bytes == pytest.approx(2 * a.bytes) and b.flops == pytest.approx(2 * a.flops), a.name
    chains = {k.name: k.chain for k in gdn_kernels(2, 32768) if k.chain}
    assert chains == {"chunk_gated_delta_rule_fwd_kernel_h_blockdim64": 512,
                      "chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64": 512}
    assert all(k.floor_us > 0 for k in one)


def test_kernel_list_covers_every_gdn_kernel_of_the_32k_profile():
    # the kernels the tool knows add up to the profile's whole 'FLA (GDN, conv)' kind: none is left out
    table = PROFILE_32K.read_text(encoding="utf-8")
    per_call = measured_per_call(table, steps=2, calls_per_step=56)
    names = {k.name for k in gdn_kernels(2, 32768) + conv_kernels(2, 32768)}
    assert sum(per_call[n][0] for n in names) == pytest.approx(summarize(table, 2)["FLA (GDN, conv)"], abs=0.05)
    assert per_call["chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64"][1] == pytest.approx(1341.9, abs=0.1)


def test_cli_table_and_errors():
    tool = str(REPO / "tools/gdn_floors.py")
    r = subprocess.run([sys.executable, tool, "--profile", str(PROFILE_32K), "--steps", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    total = r.stdout.strip().splitlines()[-1].split()
    assert total[0] == "total" and float(total[1]) == pytest.approx(250.8, abs=0.05)
    r = subprocess.run([sys.executable, tool, "--profile", str(PROFILE_32K)], capture_output=True, text=True)
    assert r.returncode == 2 and "--profile needs --steps" in r.stderr
    r = subprocess.run([sys.executable, tool, "--seq-len", "3000"], capture_output=True, text=True)
    assert r.returncode == 2 and "--batch-tokens 393216" in r.stderr
    r = subprocess.run([sys.executable, tool, "--batch-tokens", "-524288"], capture_output=True, text=True)
    assert r.returncode == 2 and "--batch-tokens >= 0" in r.stderr
