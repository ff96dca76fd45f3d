"""torch.compile over the whole model (the CUDA training path) computes the same math as eager: the loss and every
parameter gradient of a tiny model of each script, in fp32 on the CPU (tools/check_compile.py runs the same
comparison on a GPU with bf16 autocast and FLA). Catches a fused path (q|k|v matmul, conv + SiLU, custom ops)
that traces into a different computation."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from tools import check_compile  # noqa: E402

import torch  # noqa: E402


@pytest.mark.parametrize("script,env", [
    ("train_gpt", dict(MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", NUM_LAYERS="3")),
    ("train_gpt_gdn", dict(MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", NUM_LAYERS="3", GDN_LAYERS="0,2")),
])
def test_compiled_model_matches_eager_on_cpu(clean_env, script, env):
    for k, v in env.items():
        clean_env.setenv(k, v)
    rows = check_compile.check(script, seq_len=96, batch=2, dev=torch.device("cpu"))
    assert len(rows) > 20 and rows[0][1] == "loss"
    for name, what, e_comp, e_eager, limit in rows:
        assert e_eager == 0.0  # on the CPU eager runs fp32: it is the reference itself
        assert e_comp <= 1e-4, (name, what, e_comp)


def test_relative_error_measure():
    """tools/checks.rel, the measure every GPU check reports: scale-free, and inf for a non-finite result."""
    from tools.checks import rel
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert rel(ref, ref) == 0.0
    assert abs(rel(ref * 1.01, ref) - 0.01) < 1e-12
    assert rel(torch.tensor([float("nan"), 4.0]), ref) == float("inf")
