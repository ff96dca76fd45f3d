"""COMPILE_MEMORY_BUDGET (torch.compile's activation memory budget) trades memory for recomputation without
changing the math: on the CPU, a tiny model of each script saves fewer bytes for backward under a budget of 0.5
than under 1 (tools/saved_activations.py), and the compiled model under that budget still gives eager's loss and
gradients (tools/check_compile.py applies the script's budget)."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO))
from tools import check_compile, saved_activations  # noqa: E402

TINY = dict(MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", NUM_LAYERS="3")


@pytest.mark.parametrize("script,extra", [("train_gpt", {}), ("train_gpt_gdn", dict(GDN_LAYERS="0,2"))])
def test_lower_budget_saves_less_and_keeps_the_math(clean_env, script, extra):
    for k, v in {**TINY, **extra}.items():
        clean_env.setenv(k, v)
    full, _ = saved_activations.saved_bytes(script, batch=2, seq_len=64, budget=1.0)
    half, _ = saved_activations.saved_bytes(script, batch=2, seq_len=64, budget=0.5)
    assert 0 < half < 0.9 * full, (half, full)
    clean_env.setenv("COMPILE_MEMORY_BUDGET", "0.5")
    rows = check_compile.check(script, seq_len=64, batch=2, dev=torch.device("cpu"))
    for name, what, e_comp, e_eager, limit in rows:
        assert e_comp <= 1e-4, (name, what, e_comp)
