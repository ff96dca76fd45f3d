"""COMPILE_MEMORY_BUDGET (torch.compile's activation memory budget) trades memory for recomputation without
changing the math: on the CPU, a tiny model of each script saves fewer bytes for backward under a budget of 0.5
than under 1 (tools/saved_activations.py), and the compiled model under that budget still gives eager's loss and
gradients (tools/check_compile.py applies the script's budget)."""

from __future__ import annotations

import importlib
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


@pytest.mark.parametrize("script,extra", [("train_gpt", {}), ("train_gpt_gdn", dict(GDN_LAYERS="0,2"))])
def test_mlp_recompute_saves_relu2_and_keeps_the_math(clean_env, script, extra):
    """MLP_RECOMPUTE=1 (ReluSquaredLinear): the compiled model saves one (tokens, hidden) bf16 tensor less per
    layer (relu^2 of fc's output; compile's CSE must not merge the backward's recompute back into it), and gives
    the plain MLP's loss and gradients: bitwise in eager (same operations), within 1e-4 of eager compiled."""
    for k, v in {**TINY, **extra}.items():
        clean_env.setenv(k, v)
    saved = {}
    for flag in ("0", "1"):
        clean_env.setenv("MLP_RECOMPUTE", flag)
        saved[flag], _ = saved_activations.saved_bytes(script, batch=2, seq_len=64, budget=1.0)
    relu2 = int(TINY["NUM_LAYERS"]) * 2 * 64 * 2 * int(TINY["MODEL_DIM"]) * 2  # layers x tokens x hidden x bf16
    assert saved["0"] - saved["1"] >= relu2, (saved, relu2)
    mod = importlib.import_module(script)
    grads = {}
    for flag in ("0", "1"):
        clean_env.setenv("MLP_RECOMPUTE", flag)
        args = mod.Hyperparameters()
        torch.manual_seed(0)
        model = mod.GPT(args)
        for blk in model.blocks:  # zero-init projections would make every MLP gradient but proj's zero
            torch.nn.init.normal_(blk.mlp.proj.weight, std=0.05)
        assert all(blk.mlp.recompute is (flag == "1") for blk in model.blocks)
        x = torch.randint(0, args.vocab_size, (2, 64))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, x)
        loss.backward()
        grads[flag] = [loss.detach()] + [p.grad for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(grads["0"], grads["1"]))
    rows = check_compile.check(script, seq_len=64, batch=2, dev=torch.device("cpu"))  # MLP_RECOMPUTE=1 still set
    for name, what, e_comp, e_eager, limit in rows:
        assert e_comp <= 1e-4, (name, what, e_comp)


@pytest.mark.parametrize("script,tokens,seq,want", [("train_gpt", 393216, 8192, "0"), ("train_gpt", 524288, 32768, "1"),
                                                    ("train_gpt_gdn", 393216, 8192, "1")])
def test_mlp_recompute_auto(clean_env, script, tokens, seq, want):
    """auto (the baseline's default): on above 49152 tokens per micro-batch, as the 32k presets' 65536; the hybrid
    defaults to 1 (it pays for GDN_SAVE_WV's memory)."""
    clean_env.setenv("TRAIN_BATCH_TOKENS", str(tokens))
    clean_env.setenv("TRAIN_SEQ_LEN", str(seq))
    args = importlib.import_module(script).Hyperparameters()
    args.check_batch(1, 8)
    assert args.mlp_recompute == want


@pytest.mark.parametrize("script", ["train_gpt", "train_gpt_gdn"])
def test_mlp_recompute_layers_picks_the_first_blocks(clean_env, script):
    """MLP_RECOMPUTE_LAYERS=N: only the first N blocks recompute (the rest keep relu^2), and the compiled model
    saves (NUM_LAYERS - N) relu^2 tensors more than with every block recomputing."""
    for k, v in {**TINY, "MLP_RECOMPUTE": "1"}.items():
        clean_env.setenv(k, v)
    if script == "train_gpt_gdn":
        clean_env.setenv("GDN_LAYERS", "0,2")
    mod = importlib.import_module(script)
    saved = {}
    for n in ("1", "3"):
        clean_env.setenv("MLP_RECOMPUTE_LAYERS", n)
        model = mod.GPT(mod.Hyperparameters())
        assert [blk.mlp.recompute for blk in model.blocks] == [i < int(n) for i in range(3)]
        saved[n], _ = saved_activations.saved_bytes(script, batch=2, seq_len=64, budget=1.0)
    relu2 = 2 * 64 * 2 * int(TINY["MODEL_DIM"]) * 2  # tokens x hidden x bf16, one block
    assert saved["1"] - saved["3"] >= 2 * relu2, (saved, relu2)
