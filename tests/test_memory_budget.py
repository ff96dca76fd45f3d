"""COMPILE_MEMORY_BUDGET (torch.compile's activation memory budget) trades memory for recomputation without
changing the math: on the CPU, a tiny model of each script saves fewer bytes for backward under a budget of 0.5
than under 1 (tools/saved_activations.py), and the compiled model under that budget still gives eager's loss and
gradients (tools/check_compile.py applies the script's budget). MLP_RECOMPUTE=1 (the MLP's relu^2 recomputed in the
backward) saves one MLP-wide tensor per layer less and gives the same loss and gradients, eager and compiled."""

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


def test_mlp_recompute_saves_less_and_keeps_the_math(clean_env):
    """On the baseline (the MLP is shared code: test_scripts_identical holds the hybrid to the same source)."""
    script = "train_gpt"
    for k, v in TINY.items():
        clean_env.setenv(k, v)
    mod = __import__(script)
    results = {}
    for flag in ("0", "1"):
        clean_env.setenv("MLP_RECOMPUTE", flag)
        saved, _ = saved_activations.saved_bytes(script, batch=2, seq_len=64, budget=1.0)
        args = mod.Hyperparameters()
        assert args.mlp_recompute == (flag == "1")
        mod.prepare_mixers(args, torch.device("cpu"))
        mod.configure_attention(args, torch.device("cpu"))
        torch.manual_seed(0)
        model = mod.GPT(args)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        x, y = torch.randint(0, args.vocab_size, (2, 64)), torch.randint(0, args.vocab_size, (2, 64))
        runs = []
        for compiled in (False, True):
            torch._dynamo.reset()
            m = torch.compile(model, dynamic=False) if compiled else model
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = m(x, y)
            loss.backward()
            runs.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
        results[flag] = (saved, runs)
    mlp_tensor = 2 * 64 * int(TINY["MODEL_DIM"]) * 2 * 2  # batch * seq * (mult * dim) bf16 elements, in bytes
    layers = int(TINY["NUM_LAYERS"])
    assert results["0"][0] - results["1"][0] == layers * mlp_tensor, (results["0"][0], results["1"][0])
    for a, b in zip(results["0"][1], results["1"][1]):  # eager vs eager, compiled vs compiled
        for t0, t1 in zip(a, b):
            assert torch.equal(t0, t1)
