"""ATTN_BACKEND=fa4's wrapper (register_fa4_op: FlashAttention-4's forward and backward as one custom op with
autograd and fake kernels), checked on CPU with a stand-in for flash_attn.cute.interface that computes exact
causal GQA attention in float64 with FA4's calling convention ((B, T, H, D) tensors, lse (B, H, T)). What the
real kernels compute is checked on the GPU (configure_attention's check, tools/gpu/bench_attention_impls.py)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from conftest import load_script

BASE, HYB = load_script("train_gpt"), load_script("train_gpt_gdn")
CALLS = {"fwd": 0, "bwd": 0}


def _expand(q, k, v):
    rep = q.size(2) // k.size(2)
    qt, kt, vt = (t.transpose(1, 2).double() for t in (q, k, v))
    return qt, kt.repeat_interleave(rep, 1), vt.repeat_interleave(rep, 1), rep


def _probs(qt, kt, scale):
    T = qt.size(2)
    s = (qt @ kt.transpose(-1, -2) * scale).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    lse = torch.logsumexp(s, -1)
    return torch.exp(s - lse[..., None]), lse


def _fake_fwd(q, k, v, softmax_scale=None, causal=False, return_lse=False, **kw):
    assert causal and return_lse and not kw
    CALLS["fwd"] += 1
    qt, kt, vt, _ = _expand(q, k, v)
    p, lse = _probs(qt, kt, softmax_scale)
    return (p @ vt).transpose(1, 2).to(q.dtype), lse.float(), None, None, None


def _fake_bwd(q, k, v, out, dout, lse, softmax_scale, causal, **kw):
    """Attention's backward written out (a custom op's kernel runs below autograd): dV = P^T dO,
    dS = P (dO V^T - rowsum(dO O)), dQ = scale dS K, dK = scale dS^T Q, summed over each KV head's query heads."""
    assert causal and not kw and lse.shape == (q.size(0), q.size(2), q.size(1))
    CALLS["bwd"] += 1
    qt, kt, vt, rep = _expand(q, k, v)
    p, _ = _probs(qt, kt, softmax_scale)
    do, o = dout.transpose(1, 2).double(), out.transpose(1, 2).double()
    ds = p * (do @ vt.transpose(-1, -2) - (do * o).sum(-1, keepdim=True))
    dq = softmax_scale * ds @ kt
    dk = softmax_scale * ds.transpose(-1, -2) @ qt
    dv = p.transpose(-1, -2) @ do
    fold = lambda t: t.unflatten(1, (-1, rep)).sum(2)  # noqa: E731 - (B, H, T, D) -> (B, KV, T, D)
    return tuple(g.transpose(1, 2).to(t.dtype) for g, t in zip((dq, fold(dk), fold(dv)), (q, k, v)))


@pytest.fixture(scope="module")
def fa4():
    """The stand-in module where flash_attn.cute.interface would be, for the registration's import."""
    names = ("flash_attn", "flash_attn.cute", "flash_attn.cute.interface")
    saved = {n: sys.modules.get(n) for n in names}
    iface = types.ModuleType("flash_attn.cute.interface")
    iface._flash_attn_fwd, iface._flash_attn_bwd = _fake_fwd, _fake_bwd
    sys.modules.update({"flash_attn": types.ModuleType("flash_attn"), "flash_attn.cute": types.ModuleType("x"),
                        "flash_attn.cute.interface": iface})
    try:
        assert BASE.register_fa4_op() is None and HYB.register_fa4_op() is None  # the second reuses the op
        assert BASE.FA4_OP is HYB.FA4_OP is torch.ops.gpt_fa4.attn_fwd
        yield BASE.FA4_OP
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
        BASE.FA4_OP = HYB.FA4_OP = None


def test_missing_package_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import of flash_attn fails
    for mod in (BASE, HYB):
        why = mod.register_fa4_op()
        assert why is not None and "flash_attn" in why


def test_cpu_runs_sdpa_whatever_attn_backend(fa4):
    args = BASE.Hyperparameters()
    assert args.attn_backend == "fa4"  # the default
    BASE.FA4_OP = fa4
    assert BASE.configure_attention(args, torch.device("cpu")) == "sdpa:cpu-default"
    assert BASE.FA4_OP is None


def test_op_registration(fa4):
    q = torch.randn(2, 32, 4, 16, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 32, 2, 16, dtype=torch.float64, requires_grad=True) for _ in range(2))
    torch.library.opcheck(torch.ops.gpt_fa4.attn_fwd.default, (q, k, v, 0.25))
    q, k, v = q.detach(), k.detach(), v.detach()  # the backward op has no backward of its own
    lse = torch.randn(2, 4, 32, dtype=torch.float32)
    torch.library.opcheck(torch.ops.gpt_fa4.attn_bwd.default, (torch.randn_like(q), q, k, v, torch.randn_like(q), lse,
                                                               0.25))


@pytest.mark.parametrize("mod_name", ["train_gpt", "train_gpt_gdn"])
def test_layer_same_as_sdpa(fa4, mod_name, monkeypatch):
    """The attention layer through the op: the same output and gradients (input and every weight) as through
    SDPA, eager and compiled as one graph (aot_eager: the fake kernels' shapes and strides are what inductor sees)."""
    mod = load_script(mod_name)
    torch.manual_seed(0)
    layer = mod.CausalSelfAttention(64, 4, 2, 10000.0, 1.5).double()
    for p in layer.parameters():  # the out projection is zero-initialised: give it values
        p.data.normal_(0, 0.3)
    x = torch.randn(2, 48, 64, dtype=torch.float64)
    do = torch.randn(2, 48, 64, dtype=torch.float64)

    def run(fa4_op, compiled):
        monkeypatch.setattr(mod, "FA4_OP", fa4_op)
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        f = torch.compile(layer, backend="aot_eager", fullgraph=True) if compiled else layer
        y = f(xi)
        y.backward(do)
        return [y, xi.grad] + [p.grad for p in layer.parameters()]

    ref = run(None, False)
    before = dict(CALLS)
    for compiled in (False, True):
        torch._dynamo.reset()
        got = run(fa4, compiled)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert CALLS["fwd"] > before["fwd"] and CALLS["bwd"] > before["bwd"]  # the op ran, not SDPA
