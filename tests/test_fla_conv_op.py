"""The plumbing of the hybrid's FLA conv custom op (gdn_repro::conv_silu_fwd/bwd), on the CPU: a stand-in for
fla-core's causal_conv1d_fwd/bwd (same signatures, computed with our PyTorch form) is registered through
register_fla_conv_op, and the op (eager and under torch.compile, which traces it through its fake) must give the
PyTorch form's output and gradients on a strided q|k|v-style view. The real FLA kernels are checked on a GPU by
tools/check_gdn_fla.py."""

from __future__ import annotations

import sys
import types

import torch

from conftest import load_script


def fake_fla_conv(gdn):
    def causal_conv1d_fwd(x, weight, bias, residual, initial_state=None, output_final_state=False,
                          activation=None, cu_seqlens=None):
        assert bias is None and residual is None and initial_state is None and activation == "silu"
        return gdn.causal_conv1d_silu(x, weight), None

    def causal_conv1d_bwd(x, dy, dht, weight=None, bias=None, residual=None, initial_state=None, activation=None,
                          cu_seqlens=None):
        # By hand (autograd is off inside a custom op): z = sum_j xp[t + j] w[:, j], y = silu(z).
        K, T = weight.size(1), x.size(1)
        xp = torch.nn.functional.pad(x, (0, 0, K - 1, 0))
        z = sum(xp[:, j:j + T] * weight[:, j] for j in range(K))
        s = torch.sigmoid(z)
        dz = dy * s * (1 + z * (1 - s))
        dzp = torch.nn.functional.pad(dz, (0, 0, 0, K - 1))
        dx = sum(dzp[:, K - 1 - j:K - 1 - j + T] * weight[:, j] for j in range(K))
        dw = torch.stack([(dz * xp[:, j:j + T]).sum((0, 1)) for j in range(K)], dim=1)
        return dx, dw, None, None, None

    ops = types.ModuleType("fla.modules.causal_conv1d.ops")
    ops.causal_conv1d_fwd, ops.causal_conv1d_bwd = causal_conv1d_fwd, causal_conv1d_bwd
    return ops


def test_conv_custom_op_matches_pytorch_form(monkeypatch):
    gdn = load_script("train_gpt_gdn")
    names = ["fla", "fla.modules", "fla.modules.causal_conv1d"]
    for n in names:
        monkeypatch.setitem(sys.modules, n, types.ModuleType(n))
    monkeypatch.setitem(sys.modules, "fla.modules.causal_conv1d.ops", fake_fla_conv(gdn))
    assert gdn.register_fla_conv_op() is None and gdn.CONV_OP is not None
    torch.manual_seed(0)
    C = 24
    wide = torch.randn(2, 37, C + 10)
    w = torch.randn(C, 4)
    dy = torch.randn(2, 37, C)
    results = {}
    for name, fn in (("torch", lambda x, w: gdn.conv1d_silu(x[..., :C], w, "torch")),
                     ("op", lambda x, w: gdn.conv1d_silu(x[..., :C], w, "fla")),
                     ("op compiled", torch.compile(lambda x, w: gdn.conv1d_silu(x[..., :C], w, "fla"),
                                                   dynamic=False))):
        x_leaf, w_leaf = wide.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = fn(x_leaf, w_leaf)
        y.backward(dy)
        results[name] = (y.detach(), x_leaf.grad, w_leaf.grad)
    for name in ("op", "op compiled"):
        for got, ref in zip(results[name], results["torch"]):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert results["op"][1][..., C:].abs().max() == 0  # the gradient stays inside the view
    # fla-core of another shape: refused with a reason (then the PyTorch form runs)
    saved, gdn.CONV_OP = gdn.CONV_OP, None
    try:
        monkeypatch.setattr(sys.modules["fla.modules.causal_conv1d.ops"], "causal_conv1d_bwd", lambda x, dy: None)
        assert gdn.register_fla_conv_op() == "fla's causal_conv1d_bwd has another signature"
        assert gdn.CONV_OP is None
    finally:
        gdn.CONV_OP = saved


def test_fla_ops_refused_without_fla_core(monkeypatch):
    """No fla-core: both registrations say why (the import error) and leave their op unset."""
    gdn = load_script("train_gpt_gdn")
    monkeypatch.setitem(sys.modules, "fla", None)  # import fla -> ModuleNotFoundError
    monkeypatch.setattr(gdn, "GDN_OP", None)
    monkeypatch.setattr(gdn, "CONV_OP", None)
    assert gdn.register_fla_gdn_op().startswith("ModuleNotFoundError")
    assert gdn.register_fla_conv_op().startswith("ModuleNotFoundError")
    assert gdn.GDN_OP is None and gdn.CONV_OP is None
