"""The hybrid's Gated DeltaNet pieces (train_gpt_gdn.py) against references written from SPEC.md.

Tolerances: inputs are float64, but gated_delta_rule_chunked upcasts/downcasts to fp32 internally (it is the
CPU training path and computes in fp32 by design), so it can only agree with a float64 recurrence to fp32
rounding amplified by the chunk algebra (triangular solve, cumulative log decays): measured ~1e-7..5e-6 relative
error here. The bound 1e-4 leaves a wide margin over that while still catching any real error in the algebra
(a wrong decay, a missing term or an off-by-one gives errors of order 1e-2..1).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

import subprocess
import types
import sys

from conftest import REPO, load_script

gdn = load_script("train_gpt_gdn")
TOL = 1e-4


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def recurrence(q, k, v, g, beta, scale):
    """SPEC.md's step-by-step gated delta rule, per (batch, head):
    S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t - exp(g_t) S_{t-1}^T k_t)^T ;  o_t = scale S_t^T q_t."""
    B, T, H, dk = q.shape
    S = q.new_zeros(B, H, dk, v.shape[-1])
    out = []
    for t in range(T):
        decayed = g[:, t].exp()[..., None, None] * S
        kt = k[:, t]
        err = v[:, t] - torch.einsum("bhkv,bhk->bhv", decayed, kt)
        S = decayed + beta[:, t][..., None, None] * kt[..., :, None] * err[..., None, :]
        out.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return torch.stack(out, dim=1)


def make_inputs(seed, B, T, H, dk, dv, decay="normal"):
    """Raw leaves (q, k, v, a, b) in float64 and per-head A_log, dt_bias as the mixer uses them."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v, a, b = r(B, T, H, dk), r(B, T, H, dk), r(B, T, H, dv), r(B, T, H), 2 * r(B, T, H)
    if decay == "normal":  # the init's range: A_log = log U(1, 16), softplus(dt_bias) in [1e-3, 0.1]
        A_log = torch.empty(H, dtype=torch.float64).uniform_(1, 16, generator=gen).log()
        dt_bias = torch.empty(H, dtype=torch.float64).uniform_(-7, -2, generator=gen)
    elif decay == "mixed":  # heads from almost no decay to fast decay
        A_log = torch.linspace(-3, 2, H, dtype=torch.float64)
        dt_bias = r(H)
    else:  # "strong": per-step log decays down to ~ -30 (state forgotten within a token or two)
        A_log = torch.full((H,), 1.5, dtype=torch.float64)
        dt_bias = r(H) + 4.0
    return [t.requires_grad_() for t in (q, k, v, a, b)], A_log, dt_bias


def gdn_outputs(fn, leaves, A_log, dt_bias, seed, **kw):
    """o and the gradients of <o, W> w.r.t. q, k, v, a, b, through l2_normalize, beta = 2 sigmoid(b) and
    g = -exp(A_log) softplus(a + dt_bias)."""
    q, k, v, a, b = leaves
    g = -A_log.exp() * F.softplus(a + dt_bias)
    beta = 2 * torch.sigmoid(b)
    scale = q.shape[-1] ** -0.5
    o = fn(gdn.l2_normalize(q), gdn.l2_normalize(k), v, g, beta, scale, **kw)
    W = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed + 99), dtype=torch.float64)
    grads = torch.autograd.grad((o * W).sum(), leaves)
    return o.detach(), grads, g.detach()


CASES = [  # (B, T, H, dk, dv, chunk, decay)
    (2, 100, 2, 42, 84, 64, "normal"),  # the study's head dims, T not a multiple of the chunk
    (1, 100, 3, 42, 84, 64, "mixed"),
    (2, 37, 2, 4, 8, 16, "normal"),  # small head dims, 3 chunks with a ragged tail
    (2, 37, 2, 8, 4, 16, "mixed"),  # dv < dk
    (1, 130, 2, 16, 32, 64, "strong"),
    (2, 50, 2, 42, 84, 64, "strong"),
]


@pytest.mark.parametrize("seed,B,T,H,dk,dv,chunk,decay", [(i, *c) for i, c in enumerate(CASES)])
def test_chunked_matches_recurrence(seed, B, T, H, dk, dv, chunk, decay):
    leaves, A_log, dt_bias = make_inputs(seed, B, T, H, dk, dv, decay)
    o_ref, g_ref, g = gdn_outputs(recurrence, leaves, A_log, dt_bias, seed)
    o, grads, _ = gdn_outputs(gdn.gated_delta_rule_chunked, leaves, A_log, dt_bias, seed, chunk_size=chunk)
    if decay == "strong":
        assert g.min() < -15  # the test really covers fast decay
    assert o.dtype == torch.float64 and o.shape == (B, T, H, dv)
    assert rel_err(o, o_ref) < TOL
    for name, x, ref in zip("q k v a b".split(), grads, g_ref):
        assert torch.isfinite(x).all(), name
        if name == "a" and decay == "strong":
            # The true decay gradient is tiny here; the chunked form's fp32 error on it scales with the other
            # gradients (see test_decay_gradient_relative_precision_strong_decay): bound it against those.
            err = (x - ref).norm() / max(ref.norm(), g_ref[2].norm())
            assert err < TOL, (name, err)
        else:
            assert rel_err(x, ref) < TOL, (name, rel_err(x, ref))


@pytest.mark.parametrize("seed,B,T,H,dk,dv,chunk,decay", [(i, *c) for i, c in enumerate(CASES) if c[-1] == "strong"])
def test_decay_gradient_relative_precision_strong_decay(seed, B, T, H, dk, dv, chunk, decay):
    """Under fast decay (g ~ -15..-40 per step) the gradient w.r.t. the decay input is ~1e-6 of the others.
    The chunk's decay matrix exp(G_t - G_s) has ones on its diagonal whatever G is, yet autograd sends +X and -X
    (X ~ the O(1) gradient of those entries) to the same G_t; in fp32 they cancel only to ~1e-7 * X, and the
    cumsum backward spreads that onto every earlier g of the chunk: ~5% relative error on da (measured), versus
    ~1e-5 with the diagonal built as a constant (decay = exp(where(strictly lower, G_t - G_s, -inf)) + I),
    which is what the script does."""
    leaves, A_log, dt_bias = make_inputs(seed, B, T, H, dk, dv, decay)
    _, g_ref, _ = gdn_outputs(recurrence, leaves, A_log, dt_bias, seed)
    _, grads, _ = gdn_outputs(gdn.gated_delta_rule_chunked, leaves, A_log, dt_bias, seed, chunk_size=chunk)
    assert rel_err(grads[3], g_ref[3]) < TOL


def test_chunk_size_does_not_change_result():
    leaves, A_log, dt_bias = make_inputs(5, 1, 70, 2, 12, 24, "mixed")
    o16, _, _ = gdn_outputs(gdn.gated_delta_rule_chunked, leaves, A_log, dt_bias, 5, chunk_size=16)
    o64, _, _ = gdn_outputs(gdn.gated_delta_rule_chunked, leaves, A_log, dt_bias, 5, chunk_size=64)
    o128, _, _ = gdn_outputs(gdn.gated_delta_rule_chunked, leaves, A_log, dt_bias, 5, chunk_size=128)
    assert rel_err(o16, o64) < TOL and rel_err(o128, o64) < TOL


def test_extreme_decay_stays_finite():
    """Log decays of -1e4 per step (exp underflows to 0 in fp32): the state is reset every step, so
    o_t = scale * beta_t (k_t . q_t) v_t exactly, and nothing may overflow or turn into NaN."""
    B, T, H, dk, dv = 1, 40, 2, 8, 16
    gen = torch.Generator().manual_seed(3)
    q = gdn.l2_normalize(torch.randn(B, T, H, dk, generator=gen, dtype=torch.float64))
    k = gdn.l2_normalize(torch.randn(B, T, H, dk, generator=gen, dtype=torch.float64))
    v = torch.randn(B, T, H, dv, generator=gen, dtype=torch.float64)
    beta = 2 * torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    g = torch.full((B, T, H), -1e4, dtype=torch.float64, requires_grad=True)
    o = gdn.gated_delta_rule_chunked(q, k, v, g, beta, 0.5, chunk_size=16)
    expected = 0.5 * beta[..., None] * (k * q).sum(-1, keepdim=True) * v
    assert rel_err(o, expected) < TOL
    (grad,) = torch.autograd.grad(o.sum(), g)
    assert torch.isfinite(grad).all()


def test_output_dtype_follows_v():
    leaves, A_log, dt_bias = make_inputs(1, 1, 20, 2, 8, 8)
    q, k, v, a, b = (t.detach().float() for t in leaves)
    g = -A_log.float().exp() * F.softplus(a + dt_bias.float())
    o = gdn.gated_delta_rule_chunked(gdn.l2_normalize(q), gdn.l2_normalize(k), v.bfloat16(), g, torch.sigmoid(b),
                                     0.3, chunk_size=8)
    assert o.dtype == torch.bfloat16 and o.shape == (1, 20, 2, 8)


def test_l2_normalize():
    x = torch.randn(3, 5, 7, dtype=torch.float64)
    y = gdn.l2_normalize(x)
    assert torch.allclose(y.norm(dim=-1), torch.ones(3, 5, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(y, x / x.norm(dim=-1, keepdim=True), rtol=1e-5)
    assert torch.isfinite(gdn.l2_normalize(torch.zeros(2, 4))).all()


# ------------------------------------------------------------------------------------------------
# causal_conv1d
# ------------------------------------------------------------------------------------------------


def conv_loop(x, w):
    """y[b, t, c] = sum_j w[c, j] * x[b, t - (K - 1) + j, c], zero before the start (last tap = current)."""
    B, T, C = x.shape
    K = w.shape[1]
    y = torch.zeros_like(x)
    for t in range(T):
        for j in range(K):
            s = t - (K - 1) + j
            if s >= 0:
                y[:, t] += w[:, j] * x[:, s]
    return y


@pytest.mark.parametrize("K", [1, 2, 4])
def test_causal_conv1d_silu_matches_loop(K):
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    w = torch.randn(6, K, dtype=torch.float64)
    assert torch.allclose(gdn.causal_conv1d_silu(x, w), F.silu(conv_loop(x, w)), rtol=1e-12, atol=1e-12)


def test_causal_conv1d_silu_matches_bf16_conv():
    """In bf16 (the CUDA dtype) the fused form equals a bf16 depthwise F.conv1d then SiLU, to bf16 rounding:
    it accumulates in fp32 as the conv does, and skips the conv output's rounding before the SiLU."""
    torch.manual_seed(0)
    x = torch.randn(2, 64, 24).bfloat16()
    w = torch.randn(24, 4) * 0.5
    ref = F.silu(F.conv1d(F.pad(x.transpose(1, 2).float(), (3, 0)), w.bfloat16().float().unsqueeze(1),
                          groups=24)).transpose(1, 2)
    got = gdn.causal_conv1d_silu(x, w)
    assert got.dtype == torch.bfloat16
    assert (got.float() - ref).abs().max() <= 2 ** -7 * ref.abs().max()


def test_causal_conv1d_silu_gradients():
    x = torch.randn(2, 13, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gdn.causal_conv1d_silu, (x, w))


def test_causal_conv1d_silu_is_causal():
    x = torch.randn(1, 20, 5, dtype=torch.float64)
    w = torch.randn(5, 4, dtype=torch.float64)
    y = gdn.causal_conv1d_silu(x, w)
    x2 = x.clone()
    x2[:, 12:] += torch.randn(1, 8, 5, dtype=torch.float64)
    y2 = gdn.causal_conv1d_silu(x2, w)
    assert torch.equal(y[:, :12], y2[:, :12])
    assert not torch.allclose(y[:, 12:], y2[:, 12:])


# ------------------------------------------------------------------------------------------------
# The GatedDeltaNet module
# ------------------------------------------------------------------------------------------------


def small_args(monkeypatch, **env):
    for k, v in dict(MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", NUM_LAYERS="4", GDN_LAYERS="0,1,3",
                     **env).items():
        monkeypatch.setenv(k, v)
    return gdn.Hyperparameters()


def test_gdn_dims_default(clean_env):
    args = gdn.Hyperparameters()
    assert gdn.gdn_dims(args) == (8, 42, 84)
    assert gdn.parse_gdn_layers(args.gdn_layers_raw, args.num_layers) == [0, 1, 2, 4, 5, 6, 8]


@pytest.mark.parametrize("seq,batch,programs", [(8192, 393216, 144), (16384, 393216, 72), (32768, 524288, 48),
                                                 (65536, 524288, 24)])
def test_fla_recurrence_programs_at_the_presets(clean_env, seq, batch, programs):
    """v21 widens FLA's recurrence tiles only below 64 programs: the 32k preset (measured faster), not 16k (slower)."""
    clean_env.setenv("TRAIN_SEQ_LEN", str(seq))
    clean_env.setenv("TRAIN_BATCH_TOKENS", str(batch))
    assert gdn.fla_recurrence_programs(gdn.Hyperparameters()) == programs


def test_module_forward_zero_init_and_shapes(clean_env):
    args = small_args(clean_env)
    torch.manual_seed(0)
    m = gdn.GatedDeltaNet(args, impl="torch")
    assert (m.heads, m.dk, m.dv) == (4, 12, 24)
    x = torch.randn(2, 50, 64)
    y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.count_nonzero(m.o_proj.weight) == 0 and torch.count_nonzero(y) == 0
    # Gradients still reach o_proj (and only through it while it is zero).
    (y * torch.randn_like(y)).sum().backward()
    assert m.o_proj.weight.grad is not None and m.o_proj.weight.grad.abs().sum() > 0


def test_module_init_ranges(clean_env):
    args = gdn.Hyperparameters()  # the study's mixer: H=8
    torch.manual_seed(1)
    m = gdn.GatedDeltaNet(args, impl="torch")
    A = m.A_log.detach().exp()
    assert A.shape == (8,) and (A >= 1 - 1e-5).all() and (A <= 16 + 1e-4).all()
    dt = F.softplus(m.dt_bias.detach())
    assert dt.shape == (8,) and (dt >= 1e-3 * (1 - 1e-4)).all() and (dt <= 0.1 * (1 + 1e-4)).all()
    assert torch.equal(m.o_norm_weight.detach(), torch.ones(84))
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {
        "q_proj.weight": (336, 448), "k_proj.weight": (336, 448), "v_proj.weight": (672, 448),
        "gate_proj.weight": (672, 448), "a_proj.weight": (8, 448), "b_proj.weight": (8, 448),
        "o_proj.weight": (448, 672), "q_conv": (336, 4), "k_conv": (336, 4), "v_conv": (672, 4),
        "A_log": (8,), "dt_bias": (8,), "o_norm_weight": (84,)}


def test_module_matches_spec_reference(clean_env):
    """With a random (non-zero) out projection, the mixer equals SPEC.md's description computed in float64
    with the step-by-step recurrence."""
    args = small_args(clean_env)
    torch.manual_seed(2)
    m = gdn.GatedDeltaNet(args, impl="torch").double()
    with torch.no_grad():
        m.o_proj.weight.normal_(0, 0.1)
        m.o_norm_weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 45, 64, dtype=torch.float64)
    H, dk, dv = 4, 12, 24
    B, T, _ = x.shape

    def branch(proj, conv, d):
        return F.silu(conv_loop(x @ proj.weight.T, conv)).reshape(B, T, H, d)

    with torch.no_grad():
        q, k, v = branch(m.q_proj, m.q_conv, dk), branch(m.k_proj, m.k_conv, dk), branch(m.v_proj, m.v_conv, dv)
        beta = 2 * torch.sigmoid(x @ m.b_proj.weight.T)
        g = -m.A_log.exp() * F.softplus(x @ m.a_proj.weight.T + m.dt_bias)
        o = recurrence(q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True), v, g, beta, dk ** -0.5)
        o = o / o.square().mean(-1, keepdim=True).add(torch.finfo(torch.float64).eps).sqrt() * m.o_norm_weight
        o = o * F.silu(x @ m.gate_proj.weight.T).reshape(B, T, H, dv)
        ref = o.reshape(B, T, H * dv) @ m.o_proj.weight.T
        y = m(x)
    assert rel_err(y, ref) < TOL


def test_module_is_causal(clean_env):
    args = small_args(clean_env)
    torch.manual_seed(3)
    m = gdn.GatedDeltaNet(args, impl="torch")
    with torch.no_grad():
        m.o_proj.weight.normal_(0, 0.1)
    x = torch.randn(1, 80, 64)
    x2 = x.clone()
    x2[:, 70:] = torch.randn(1, 10, 64)
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    assert torch.allclose(y[:, :70], y2[:, :70], rtol=0, atol=1e-6)
    assert not torch.allclose(y[:, 70:], y2[:, 70:], atol=1e-3)


def test_make_mixer_places_gdn_layers(clean_env):
    args = small_args(clean_env)
    assert gdn.prepare_mixers(args, torch.device("cpu"))  # resolves GDN_IMPL=auto to torch on CPU
    assert args.gdn_impl == "torch"
    model = gdn.GPT(args)
    kinds = [type(b.mixer).__name__ for b in model.blocks]
    assert kinds == ["GatedDeltaNet", "GatedDeltaNet", "CausalSelfAttention", "GatedDeltaNet"]
    assert all(b.mixer.impl == "torch" for b in model.blocks if hasattr(b.mixer, "impl"))


def test_parse_gdn_layers():
    assert gdn.parse_gdn_layers("", 9) == []
    assert gdn.parse_gdn_layers(" 8, 0,1 ", 9) == [0, 1, 8]
    for bad in ("9", "-1", "0,0", "a,b", "1;2"):
        with pytest.raises(gdn.ConfigError, match="GDN_LAYERS"):
            gdn.parse_gdn_layers(bad, 9)


def test_hybrid_gpt_backward_is_finite(clean_env):
    args = small_args(clean_env)
    gdn.prepare_mixers(args, torch.device("cpu"))
    torch.manual_seed(4)
    model = gdn.GPT(args)
    x = torch.randint(0, 1024, (2, 64))
    loss = model(x, torch.roll(x, -1, 1))
    assert abs(loss.item() - math.log(1024)) < 0.1  # tiny embedding init: near-uniform logits
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


def fake_fla_host(monkeypatch, state_op_why):
    """prepare_mixers as on a CUDA host with fla-core: a stand-in fla module, FLA's op and our conv op
    'registered', the state-saving op registered (state_op_why None) or refused with that reason."""
    fla_mod = types.ModuleType("fla")
    fla_mod.__version__ = "0.0-standin"
    monkeypatch.delenv("FLA_CACHE_RESULTS", raising=False)  # import_fla sets it: undone after the test
    for name in ("fla.ops", "fla.ops.gated_delta_rule", "fla.utils"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["fla.ops.gated_delta_rule"].chunk_gated_delta_rule = object()
    sys.modules["fla.utils"].autotune_cache_kwargs = {"cache_results": False}  # fla-core 0.6.0's, with our setting
    monkeypatch.setitem(sys.modules, "fla", fla_mod)
    plain = object()

    def state(*args):  # the state-saving op: records its arguments
        state.calls.append(args)
        return ("o",)
    state.calls = []

    def register_op():
        gdn.GDN_OP = plain
        return None

    def register_state_op():
        if state_op_why is None:
            gdn.GDN_STATE_OP = state
        return state_op_why

    monkeypatch.setattr(gdn, "GDN_OP", None)
    monkeypatch.setattr(gdn, "GDN_STATE_OP", None)
    monkeypatch.setattr(gdn, "triton_breaks_hopper_gdn", lambda device: None)
    monkeypatch.setattr(gdn, "register_fla_gdn_op", register_op)
    monkeypatch.setattr(gdn, "register_fla_gdn_state_op", register_state_op)
    monkeypatch.setattr(gdn, "register_conv_op", lambda: None)
    return plain, state


@pytest.mark.parametrize("setting", ["auto", "1", "0"])
def test_gdn_save_state_selection_on_fla_host(clean_env, setting):
    """GDN_SAVE_STATE: auto (the default) and 1 put the state-saving op in GDN_OP where FLA's path runs, 0 keeps
    FLA's own op; the GDN line says which."""
    plain, state = fake_fla_host(clean_env, None)
    args = small_args(clean_env, **({} if setting == "auto" else dict(GDN_SAVE_STATE=setting)))
    assert args.gdn_save_state == setting
    lines = gdn.prepare_mixers(args, torch.device("cuda"))
    assert args.gdn_impl == "fla"
    assert gdn.GDN_OP is (plain if setting == "0" else state)
    assert ("chunk states saved for the backward" in lines[2]) == (setting != "0")
    assert lines[2].endswith("; FLA autotuned at this run's shapes") and os.environ["FLA_CACHE_RESULTS"] == "0"


@pytest.mark.parametrize("state,wv,kept", [("auto", "auto", True), ("auto", "1", True), ("auto", "0", False),
                                            ("0", "auto", False)])
def test_gdn_save_wv_selection_on_fla_host(clean_env, state, wv, kept):
    """GDN_SAVE_WV: auto (the default) and 1 keep w and v_new where the state-saving op runs; 0 or no state op
    (GDN_SAVE_STATE=0) recompute them; the GDN line says which. 1 without the state op is refused."""
    fake_fla_host(clean_env, None)
    args = small_args(clean_env, GDN_SAVE_STATE=state, GDN_SAVE_WV=wv)
    lines = gdn.prepare_mixers(args, torch.device("cuda"))
    assert gdn.GDN_SAVE_WV is kept
    assert ("w and v_new saved too" in lines[2]) == kept
    with pytest.raises(gdn.ConfigError, match="GDN_SAVE_WV=1: needs the state-saving op.*GDN_SAVE_STATE=0"):
        gdn.prepare_mixers(small_args(clean_env, GDN_SAVE_STATE="0", GDN_SAVE_WV="1"), torch.device("cuda"))
    assert gdn.GDN_SAVE_WV is False


@pytest.mark.parametrize("seq,batch", [(32768, 524288), (16384, 393216)])
@pytest.mark.parametrize("chain", ["auto", "0", "1", "bwd"])
def test_gdn_state_chain_selection_on_fla_host(clean_env, chain, seq, batch):
    """GDN_STATE_CHAIN=1 runs our state recurrences inside the state-saving op (and leaves FLA's BV=16 tiles
    alone), bwd only the backward's, 0 FLA's; auto (the default) both of ours at 32k (in segments), the backward's
    at 16k; GDN_CHAIN_SEGMENT=auto cuts ours in 32-chunk segments at 32k only. The GDN line says which. 1 or bwd
    without the state op (GDN_SAVE_STATE=0) is refused; auto falls back to 0 there."""
    _, state = fake_fla_host(clean_env, None)
    widened = []
    clean_env.setattr(gdn, "widen_recurrence_tiles", lambda: widened.append(1))
    args = small_args(clean_env, **({} if chain == "auto" else dict(GDN_STATE_CHAIN=chain)),
                      TRAIN_SEQ_LEN=str(seq), TRAIN_BATCH_TOKENS=str(batch))
    assert args.gdn_state_chain == chain and args.gdn_chain_segment == "auto"
    lines = gdn.prepare_mixers(args, torch.device("cuda"))
    used = ("1" if seq == 32768 else "bwd") if chain == "auto" else chain
    segment = 32 if seq == 32768 and used != "0" else 0
    assert gdn.GDN_OP is state and gdn.GDN_STATE_CHAIN == used and gdn.GDN_CHAIN_SEGMENT == segment
    assert ("; state recurrences: our chain kernels (GDN_STATE_CHAIN=1)" in lines[2]) == (used == "1")
    assert ("backward state recurrence: our chain kernels (GDN_STATE_CHAIN=bwd)" in lines[2]) == (used == "bwd")
    assert ("in segments of 32 chunks (GDN_CHAIN_SEGMENT)" in lines[2]) == (segment == 32)
    programs_few = gdn.fla_recurrence_programs(args) < 64  # FLA's BV=16 tiles added where its forward still runs
    assert ("BV=16" in lines[2]) == (used != "1" and programs_few) and len(widened) == (used != "1" and programs_few)
    no_state = small_args(clean_env, GDN_SAVE_STATE="0", **({} if chain == "auto" else dict(GDN_STATE_CHAIN=chain)))
    if chain in ("1", "bwd"):
        with pytest.raises(gdn.ConfigError, match=f"GDN_STATE_CHAIN={chain}: needs the state-saving op.*"
                                                  "GDN_SAVE_STATE=0"):
            gdn.prepare_mixers(no_state, torch.device("cuda"))
    else:
        assert "chain kernels" not in gdn.prepare_mixers(no_state, torch.device("cuda"))[2]
    assert gdn.GDN_STATE_CHAIN == "0" and gdn.GDN_CHAIN_SEGMENT == 0


@pytest.mark.parametrize("chain", ["auto", "1", "bwd", "0"])
def test_gdn_chain_segment_selection_on_fla_host(clean_env, chain):
    """GDN_CHAIN_SEGMENT=N cuts our state recurrences' chains every N chunks where they run (GDN_STATE_CHAIN auto,
    1 or bwd with the state op), at any length, and the GDN line says so; where none of ours runs it is refused,
    not ignored. 0 keeps one chain at 32k, where auto would cut it."""
    fake_fla_host(clean_env, None)
    args = small_args(clean_env, GDN_CHAIN_SEGMENT="16", **({} if chain == "auto" else dict(GDN_STATE_CHAIN=chain)))
    if chain == "0":
        with pytest.raises(gdn.ConfigError, match="GDN_CHAIN_SEGMENT=16: .*GDN_STATE_CHAIN=0.*GDN_CHAIN_SEGMENT=auto"):
            gdn.prepare_mixers(args, torch.device("cuda"))
        assert gdn.GDN_CHAIN_SEGMENT == 0
        return
    lines = gdn.prepare_mixers(args, torch.device("cuda"))
    assert gdn.GDN_CHAIN_SEGMENT == 16 and "in segments of 16 chunks (GDN_CHAIN_SEGMENT)" in lines[2]
    assert gdn.GDN_STATE_CHAIN == ("bwd" if chain == "auto" else chain)  # short sequences: auto keeps FLA's forward
    lines = gdn.prepare_mixers(small_args(clean_env, GDN_CHAIN_SEGMENT="0", TRAIN_SEQ_LEN="32768",
                                          TRAIN_BATCH_TOKENS="524288"), torch.device("cuda"))
    assert gdn.GDN_CHAIN_SEGMENT == 0 and "in segments" not in lines[2]  # reset by each call; 0 beats auto
    assert gdn.GDN_STATE_CHAIN == ("bwd" if chain == "auto" else chain)  # one chain: our forward not chosen


def test_state_chain_choice_rules():
    """GDN_STATE_CHAIN / GDN_CHAIN_SEGMENT resolution: auto runs ours only at head dims within the tiles it was
    timed at (dk <= 64, dv <= 128; wider heads keep FLA's, with the reason); segments (auto) from 32k tokens a
    sequence; both of ours only where they are cut in segments at that length; explicit settings kept."""
    choice = gdn.state_chain_choice
    assert choice("auto", "auto", 42, 84, 8192) == ("bwd", 0, "")
    assert choice("auto", "auto", 42, 84, 32767) == ("bwd", 0, "")
    assert choice("auto", "auto", 42, 84, 32768) == ("1", 32, "")
    assert choice("auto", "auto", 64, 128, 65536) == ("1", 32, "")
    assert choice("auto", 0, 42, 84, 32768) == ("bwd", 0, "")
    assert choice("auto", 8, 42, 84, 32768) == ("1", 8, "") and choice("auto", 8, 42, 84, 16384) == ("bwd", 8, "")
    assert choice("bwd", "auto", 42, 84, 32768) == ("bwd", 32, "") and choice("1", "auto", 42, 84, 8192) == ("1", 0, "")
    for dk, dv in ((65, 128), (64, 129)):
        chain, segment, why = choice("auto", "auto", dk, dv, 32768)
        assert (chain, segment) == ("0", 0) and f"dk={dk} dv={dv}" in why
    assert choice("bwd", "auto", 128, 256, 32768) == ("bwd", 32, "")
    assert choice("0", "auto", 42, 84, 32768) == ("0", 0, "")


def test_gdn_state_chain_auto_keeps_fla_beyond_the_timed_tiles(clean_env):
    """Wider heads than ours was timed at keep FLA's recurrences under auto, and the GDN line says why."""
    fake_fla_host(clean_env, None)
    args = small_args(clean_env, GDN_HEAD_DIM_RATIO="5.0")  # dk = 5 x 64 / 4 = 80
    _, dk, dv = gdn.gdn_dims(args)
    assert dk > 64
    lines = gdn.prepare_mixers(args, torch.device("cuda"))
    assert gdn.GDN_STATE_CHAIN == "0"
    assert f"state recurrences: FLA's (GDN_STATE_CHAIN=auto: head dims dk={dk} dv={dv}" in lines[2]


def test_gdn_save_state_auto_falls_back_but_1_refuses(clean_env):
    plain, _ = fake_fla_host(clean_env, "FLA changed")
    lines = gdn.prepare_mixers(small_args(clean_env), torch.device("cuda"))
    assert gdn.GDN_OP is plain
    assert "chunk states recomputed in the backward (state-saving op not registered: FLA changed)" in lines[2]
    with pytest.raises(gdn.ConfigError, match="GDN_SAVE_STATE=1.*FLA changed.*GDN_SAVE_STATE=0 or auto"):
        gdn.prepare_mixers(small_args(clean_env, GDN_SAVE_STATE="1"), torch.device("cuda"))


# ------------------------------------------------------------------------------------------------
# GDN_SAVE_STATE=1: the state-saving custom op's wiring, with stand-ins for FLA's functions (FLA needs CUDA)
# ------------------------------------------------------------------------------------------------
STATE_OP_WIRING = r'''
import importlib.util, sys, types, torch
calls = []

def rec(name, out):
    def fn(**kw):
        result = out(**kw)
        calls.append((name, kw, result))
        return result
    return fn

def fn_with(params, body):  # a function with exactly these keyword parameters (the op checks signatures)
    ns = {"body": body}
    exec(f"def f({', '.join(params)}, cu_seqlens=None, chunk_indices=None):\n"
         f"    return body(**{{k: v for k, v in locals().items() if k != 'body'}})", ns)
    return ns["f"]

NT = lambda T: -(-T // 64)
fake = {
    "fla.ops.utils": dict(chunk_local_cumsum=fn_with(["g", "chunk_size=64", "scale=None", "reverse=False"],
                                                     rec("cumsum", lambda g, **kw: g * 2))),
    "fla.ops.utils.constant": dict(RCP_LN2=1.4426950408889634),
    "fla.ops.gated_delta_rule.chunk_fwd": dict(chunk_gated_delta_rule_fwd_intra=fn_with(
        ["k", "v", "g", "beta", "chunk_size=64"],
        rec("intra", lambda k, v, **kw: (k + 1, v + 1, k.new_zeros(*k.shape[:3], 64))))),
    "fla.ops.common.chunk_delta_h": dict(
        chunk_gated_delta_rule_fwd_h=fn_with(["k", "w", "u", "g", "initial_state", "output_final_state",
                                              "chunk_size=64"],
                                             rec("fwd_h", lambda k, u, **kw: (
                                                 torch.randn(k.size(0), NT(k.size(1)), k.size(2), k.size(3),
                                                             u.size(3)), u * 0 + 5, None))),
        chunk_gated_delta_rule_bwd_dhu=fn_with(["q", "k", "w", "g", "h0", "dht", "do", "dv", "scale",
                                                "chunk_size=64"],
                                               rec("dhu", lambda do, dv, **kw: (None, None, dv + 1)))),
    "fla.ops.common.chunk_o": dict(
        chunk_fwd_o=fn_with(["q", "k", "v", "h", "g", "scale", "chunk_size=64"], rec("fwd_o", lambda v, **kw: v * 1)),
        chunk_bwd_dv_local=fn_with(["q", "k", "g", "do", "scale", "chunk_size=64"],
                                   rec("dv_local", lambda do, **kw: do * 1)),
        chunk_bwd_dqkwg=fn_with(["q", "k", "v", "w", "g", "h", "dv", "do", "dh", "scale", "chunk_size=64"],
                                rec("dqkwg", lambda q, k, w, g, **kw: (q * 0 + 1, k * 0 + 2, w * 0 + 3, g * 0 + 4)))),
    "fla.ops.gated_delta_rule.wy_fast": dict(
        recompute_w_u_fwd=fn_with(["k", "v", "beta", "A", "g"], rec("w_u", lambda k, v, **kw: (k + 1, v + 1))),
        prepare_wy_repr_bwd=fn_with(["k", "v", "beta", "g", "A", "dw", "du"],
                                    rec("wy_bwd", lambda k, v, beta, g, **kw: (k * 0 + 10, v * 0 + 20, beta * 0 + 30,
                                                                               g * 0 + 40)))),
}
for name in ("fla", "fla.ops", "fla.ops.common", "fla.ops.gated_delta_rule"):
    sys.modules[name] = types.ModuleType(name)
for name, attrs in fake.items():
    sys.modules[name] = mod = types.ModuleType(name)
    mod.__dict__.update(attrs)

def v_new_ref(u, w, h):  # u - w h per 64-row chunk, as build_state_kernels' v_new
    B, T, H, K = w.shape
    wp = torch.nn.functional.pad(w, (0, 0, 0, 0, 0, h.size(1) * 64 - T)).view(B, -1, 64, H, K)
    return u - torch.einsum("bnchk,bnhkv->bnchv", wp, h).reshape(B, -1, H, u.size(-1))[:, :T]

spec = importlib.util.spec_from_file_location("gdn", sys.argv[1])
gdn = sys.modules["gdn"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(gdn)
def our_fwd_h(k, w, u, g, segment):  # stand-ins for our state recurrences (GDN_STATE_CHAIN), recorded like FLA's
    out = (torch.randn(k.size(0), NT(k.size(1)), k.size(2), k.size(3), u.size(3)), u * 0 + 7)
    calls.append(("our_fwd_h", dict(k=k, w=w, u=u, g=g, segment=segment), out))
    return out

def our_bwd_dhu(q, k, w, g, do, dv, scale, segment):
    out = (torch.randn(k.size(0), NT(k.size(1)), k.size(2), k.size(3), dv.size(3)), dv + 2)
    calls.append(("our_dhu", dict(q=q, k=k, w=w, g=g, do=do, dv=dv, scale=scale, segment=segment), out))
    return out

gdn.build_state_kernels = lambda: {"v_new": v_new_ref, "fwd_h": our_fwd_h, "bwd_dhu": our_bwd_dhu}
def our_wy(k, v, beta, g, A, dw, du, dk_in, dg_in):  # stand-in for our WY backward (GDN_WY_BWD)
    out = (dk_in + 100, du + 200, beta * 0 + 300, dg_in + 400)
    calls.append(("our_wy", dict(k=k, v=v, beta=beta, g=g, A=A, dw=dw, du=du, dk_in=dk_in, dg_in=dg_in), out))
    return out

gdn.build_wy_kernel = lambda: {"wy_bwd": our_wy}
def our_dqkwg(q, k, v_new, g, h, do, dh, dv, scale):  # stand-in for our dq/dk/dw/dg kernel (GDN_DQKWG)
    out = (q * 0 + 1000, k * 0 + 2000, k * 0 + 3000, g * 0 + 4000)
    calls.append(("our_dqkwg", dict(q=q, k=k, v_new=v_new, g=g, h=h, do=do, dh=dh, dv=dv, scale=scale), out))
    return out

gdn.build_dqkwg_kernel = lambda: {"dqkwg": our_dqkwg}
def our_fwd_o(q, k, v_new, h, g, scale):  # stand-in for our output kernel (GDN_FWD_O)
    out = v_new * 0 + 9
    calls.append(("our_fwd_o", dict(q=q, k=k, v_new=v_new, h=h, g=g, scale=scale), out))
    return out

gdn.build_fwd_o_kernel = lambda: {"fwd_o": our_fwd_o}
assert gdn.register_fla_gdn_state_op() is None and gdn.GDN_STATE_OP is not None and gdn.GDN_OP is None
B, T, H, K, V = 2, 100, 3, 8, 16
q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
g, beta = torch.randn(B, T, H), torch.rand(B, T, H)
leaves = [t.clone().requires_grad_(True) for t in (q, k, v, g, beta)]
o = gdn.GDN_STATE_OP(*leaves, 0.5)[0]
assert [c[0] for c in calls] == ["cumsum", "intra", "fwd_h", "fwd_o"]  # FLA's forward, step by step
h_fwd = calls[2][2][0]  # the states fwd_h returned
calls.clear()
o.backward(torch.ones_like(o))
names = [c[0] for c in calls]
assert names == ["w_u", "dv_local", "dhu", "dqkwg", "wy_bwd", "cumsum"], names  # no second state pass (fwd_h)
dqkwg = dict(calls[3][1])
w_bwd, u_bwd = k + 1, v + 1
assert torch.equal(dqkwg["w"], w_bwd)
assert torch.allclose(dqkwg["v"], v_new_ref(u_bwd, w_bwd, dqkwg["h"]))  # v_new from the saved states
assert dqkwg["h"].shape == (B, NT(T), H, K, V) and torch.equal(dqkwg["h"], h_fwd)  # the forward's states
assert calls[5][1]["reverse"] is True
grads = [t.grad for t in leaves]
for got, want in zip(grads, (1.0, 12.0, 20.0, 88.0, 30.0)):  # dq, dk + dk2, dv (wy), 2 (dg + dg2), db
    assert torch.equal(got, torch.full_like(got, want)), (got.flatten()[:3], want)

gdn.GDN_SAVE_WV = True  # GDN_SAVE_WV: the backward takes the forward's w and v_new, no recompute
leaves = [t.clone().requires_grad_(True) for t in (q, k, v, g, beta)]
calls.clear()
o = gdn.GDN_STATE_OP(*leaves, 0.5)[0]
w_fwd, v_new_fwd = calls[1][2][0], calls[2][2][1]  # intra's w, fwd_h's v_new (5 everywhere: not u - w h)
calls.clear()
o.backward(torch.ones_like(o))
names = [c[0] for c in calls]
assert names == ["dv_local", "dhu", "dqkwg", "wy_bwd", "cumsum"], names  # no w/u recompute
assert torch.equal(calls[1][1]["w"], w_fwd)
assert torch.equal(calls[2][1]["w"], w_fwd) and torch.equal(calls[2][1]["v"], v_new_fwd)
for got, want in zip([t.grad for t in leaves], (1.0, 12.0, 20.0, 88.0, 30.0)):
    assert torch.equal(got, torch.full_like(got, want)), (got.flatten()[:3], want)

gdn.GDN_STATE_CHAIN = "1"  # GDN_STATE_CHAIN: our recurrences in FLA's places, their outputs used downstream
gdn.GDN_CHAIN_SEGMENT = 5  # handed to both (GDN_CHAIN_SEGMENT)
leaves = [t.clone().requires_grad_(True) for t in (q, k, v, g, beta)]
calls.clear()
o = gdn.GDN_STATE_OP(*leaves, 0.5)[0]
assert [c[0] for c in calls] == ["cumsum", "intra", "our_fwd_h", "fwd_o"], [c[0] for c in calls]
assert calls[2][1]["segment"] == 5
w_fwd, u_fwd = calls[1][2][0], calls[1][2][1]
h_ours, v_new_ours = calls[2][2]
assert torch.equal(calls[2][1]["w"], w_fwd) and torch.equal(calls[2][1]["u"], u_fwd)
assert torch.equal(calls[2][1]["g"], calls[0][2])  # the cumulative log2 decay
assert torch.equal(calls[3][1]["h"], h_ours) and torch.equal(calls[3][1]["v"], v_new_ours)
calls.clear()
o.backward(torch.ones_like(o))
names = [c[0] for c in calls]
assert names == ["dv_local", "our_dhu", "dqkwg", "wy_bwd", "cumsum"], names
dv_local, (dh_ours, dv2_ours) = calls[0][2], calls[1][2]
assert torch.equal(calls[1][1]["dv"], dv_local) and calls[1][1]["scale"] == 0.5 and calls[1][1]["segment"] == 5
gdn.GDN_CHAIN_SEGMENT = 0
assert torch.equal(calls[2][1]["dh"], dh_ours) and torch.equal(calls[2][1]["h"], h_ours)
assert torch.equal(calls[2][1]["dv"], dv2_ours) and torch.equal(calls[3][1]["du"], dv2_ours)
for got, want in zip([t.grad for t in leaves], (1.0, 12.0, 20.0, 88.0, 30.0)):
    assert torch.equal(got, torch.full_like(got, want)), (got.flatten()[:3], want)

gdn.GDN_STATE_CHAIN = "bwd"  # FLA's forward recurrence, ours backward
leaves = [t.clone().requires_grad_(True) for t in (q, k, v, g, beta)]
calls.clear()
o = gdn.GDN_STATE_OP(*leaves, 0.5)[0]
assert [c[0] for c in calls] == ["cumsum", "intra", "fwd_h", "fwd_o"], [c[0] for c in calls]
h_fla = calls[2][2][0]
gdn.GDN_STATE_CHAIN = "0"  # flipped between forward and backward: the backward keeps the forward's choice
calls.clear()
o.backward(torch.ones_like(o))
names = [c[0] for c in calls]
assert names == ["dv_local", "our_dhu", "dqkwg", "wy_bwd", "cumsum"], names
assert torch.equal(calls[2][1]["h"], h_fla) and torch.equal(calls[2][1]["dh"], calls[1][2][0])
assert calls[1][1]["segment"] == 0

gdn.GDN_WY_BWD = True  # GDN_WY_BWD: our WY backward takes dqkwg's dk, dw, dg and dhu's dv; its outputs are the grads
leaves = [t.clone().requires_grad_(True) for t in (q, k, v, g, beta)]
calls.clear()
o = gdn.GDN_STATE_OP(*leaves, 0.5)[0]
A_fwd, g_cum = calls[1][2][2], calls[0][2]
calls.clear()
o.backward(torch.ones_like(o))
names = [c[0] for c in calls]
assert names == ["dv_local", "dhu", "dqkwg", "our_wy"], names  # FLA's WY backward, adds and cumsum gone
wy, (dq, dk, dw, dg) = calls[3][1], calls[2][2]
assert torch.equal(wy["du"], calls[1][2][2]) and torch.equal(wy["dw"], dw) and torch.equal(wy["A"], A_fwd)
assert wy["dk_in"] is dk and wy["dg_in"] is dg and torch.equal(wy["g"], g_cum)
for got, want in zip([t.grad for t in leaves], (1.0, 102.0, 202.0, 404.0, 300.0)):  # dq, dk, dv (du 2), dg, db
    assert torch.equal(got, torch.full_like(got, want)), (got.flatten()[:3], want)

gdn.GDN_DQKWG = True  # GDN_DQKWG: our kernel takes dqkwg's inputs (the saved states, dhu's dh and dv) in its place
leaves = [t.clone().requires_grad_(True) for t in (q, k, v, g, beta)]
calls.clear()
o = gdn.GDN_STATE_OP(*leaves, 0.5)[0]
h_fwd, g_cum = calls[2][2][0], calls[0][2]
calls.clear()
o.backward(torch.ones_like(o))
names = [c[0] for c in calls]
assert names == ["dv_local", "dhu", "our_dqkwg", "our_wy"], names  # FLA's dqkwg gone
ours, (dh, dv2) = calls[2][1], calls[1][2][:3:2]
assert torch.equal(ours["h"], h_fwd) and ours["dh"] is dh and ours["dv"] is dv2 and torch.equal(ours["g"], g_cum)
assert ours["scale"] == 0.5 and torch.equal(ours["q"], q) and torch.equal(ours["do"], torch.ones_like(o))
wy, (dq, dk, dw, dg) = calls[3][1], calls[2][2]
assert wy["dw"] is dw and wy["dk_in"] is dk and wy["dg_in"] is dg
for got, want in zip([t.grad for t in leaves], (1000.0, 2100.0, 202.0, 4400.0, 300.0)):  # dq ours, dk + 100, ...
    assert torch.equal(got, torch.full_like(got, want)), (got.flatten()[:3], want)
gdn.GDN_WY_BWD = False
leaves = [t.clone().requires_grad_(True) for t in (q, k, v, g, beta)]
o = gdn.GDN_STATE_OP(*leaves, 0.5)[0]
calls.clear()
o.backward(torch.ones_like(o))
names = [c[0] for c in calls]
assert names == ["dv_local", "dhu", "our_dqkwg", "wy_bwd", "cumsum"], names  # ours with FLA's WY backward
for got, want in zip([t.grad for t in leaves], (1000.0, 2010.0, 20.0, 2 * 4040.0, 30.0)):
    assert torch.equal(got, torch.full_like(got, want)), (got.flatten()[:3], want)
gdn.GDN_DQKWG = False

gdn.GDN_FWD_O = True  # GDN_FWD_O: our output kernel takes fwd_o's inputs (the states, v_new) in its place
calls.clear()
o = gdn.GDN_STATE_OP(*(t.clone() for t in (q, k, v, g, beta)), 0.5)[0]
assert [c[0] for c in calls] == ["cumsum", "intra", "fwd_h", "our_fwd_o"], [c[0] for c in calls]
fo, (h_f, v_new_f, _) = calls[3][1], calls[2][2]
assert fo["h"] is h_f and fo["v_new"] is v_new_f and fo["g"] is calls[0][2] and fo["scale"] == 0.5
assert torch.equal(o, torch.full_like(o, 9.0))  # its output is the op's
gdn.GDN_FWD_O = False
print("ok")
'''


def test_state_op_backward_uses_saved_states(tmp_path):
    """GDN_SAVE_STATE=1: the forward runs FLA's forward functions in FLA's order and returns the chunk states; the
    backward runs FLA's backward functions in chunk_gated_delta_rule_bwd's order without a second state pass,
    feeding chunk_bwd_dqkwg the forward's states and v_new = u - w h from them; gradients come back in place
    (stand-ins for FLA's functions with fixed outputs, so each gradient names its source). With GDN_SAVE_WV the
    backward skips the w/u recompute and takes the forward's w and v_new. With GDN_STATE_CHAIN=1 our two state
    recurrences run in the places of FLA's fwd_h and bwd_dhu, and their outputs feed the kernels after them; with
    bwd only the backward's, even if the setting changes between forward and backward."""
    r = subprocess.run([sys.executable, "-c", STATE_OP_WIRING, str(REPO / "train_gpt_gdn.py")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]


@pytest.mark.parametrize("setting,what", [("GDN_WY_BWD", "WY backward"),  # v28
                                          ("GDN_DQKWG", "dq/dk/dw/dg backward")])  # v29
def test_our_backward_kernels_on_by_default_on_fla_host(clean_env, setting, what):
    """GDN_WY_BWD / GDN_DQKWG: auto (the default, since v29's A/B) and 1 run our kernel inside the state-saving op
    and the GDN line says so with the setting; 0 keeps FLA's. Where they cannot apply (no state op: GDN_SAVE_STATE=0,
    or beyond one key tile: dk > 64) auto falls back to FLA's kernel and 1 is refused, not ignored, with an error
    that names the setting and the way out."""
    fake_fla_host(clean_env, None)
    assert getattr(small_args(clean_env), setting.lower()) == "auto"
    for value in ("auto", "1"):
        lines = gdn.prepare_mixers(small_args(clean_env, **{setting: value}), torch.device("cuda"))
        assert getattr(gdn, setting) is True and f"; {what}: our kernel ({setting}={value})" in lines[2]
    lines = gdn.prepare_mixers(small_args(clean_env, **{setting: "0"}), torch.device("cuda"))
    assert getattr(gdn, setting) is False and f"{what}: our kernel" not in lines[2]
    for env, why in ((dict(GDN_SAVE_STATE="0", GDN_HEAD_DIM_RATIO="0.75"), "needs the state-saving op.*SAVE_STATE=0"),
                     (dict(GDN_SAVE_STATE="auto", GDN_HEAD_DIM_RATIO="5.0"), "key head dim 80")):  # dk = 80
        lines = gdn.prepare_mixers(small_args(clean_env, **env, **{setting: "auto"}), torch.device("cuda"))
        assert getattr(gdn, setting) is False and f"{what}: our kernel" not in lines[2]
        with pytest.raises(gdn.ConfigError, match=f"{setting}=1: .*{why}.*use {setting}=0"):
            gdn.prepare_mixers(small_args(clean_env, **env, **{setting: "1"}), torch.device("cuda"))
    assert getattr(gdn, setting) is False  # reset by each call


def test_our_output_kernel_by_default_on_fla_host(clean_env):
    """GDN_FWD_O (v30) is auto by default: on inside the state op, said on the mixers' line; 0 turns it off; 1 is
    refused where it cannot run (no state op), naming the setting and the way out."""
    fake_fla_host(clean_env, None)
    assert small_args(clean_env).gdn_fwd_o == "auto"
    lines = gdn.prepare_mixers(small_args(clean_env), torch.device("cuda"))
    assert gdn.GDN_FWD_O is True and "output: our kernel (GDN_FWD_O=auto)" in lines[2], lines[2]
    lines = gdn.prepare_mixers(small_args(clean_env, GDN_FWD_O="0"), torch.device("cuda"))
    assert gdn.GDN_FWD_O is False and "output: our kernel" not in lines[2]
    lines = gdn.prepare_mixers(small_args(clean_env, GDN_FWD_O="1"), torch.device("cuda"))
    assert gdn.GDN_FWD_O is True and "output: our kernel (GDN_FWD_O=1)" in lines[2], lines[2]
    with pytest.raises(gdn.ConfigError, match="GDN_FWD_O=1: needs the state-saving op.*use GDN_FWD_O=0"):
        gdn.prepare_mixers(small_args(clean_env, GDN_FWD_O="1", GDN_SAVE_STATE="0"), torch.device("cuda"))
    assert gdn.GDN_FWD_O is False


@pytest.mark.parametrize("state_op_why", [None, "stand-in: not registered"])
def test_broken_triton_host_needs_tilelang_unless_our_dqkwg(clean_env, monkeypatch, state_op_why):
    """On Hopper with Triton 3.4-3.7.0 FLA's Triton dqkwg computes wrong gradients (FLA issue 640) and FLA sends
    that one kernel to TileLang. Without TileLang our dq/dk/dw/dg kernel (GDN_DQKWG auto or 1) replaces it inside the
    state op; where it cannot (GDN_DQKWG=0, GDN_SAVE_STATE=0, dk > 64, or the state op not registered) the run is
    refused by name: never FLA's Triton backward on that host."""
    fake_fla_host(clean_env, state_op_why)
    monkeypatch.setattr(gdn, "triton_breaks_hopper_gdn", lambda device: "Triton 3.6.0 on NVIDIA H200")
    monkeypatch.setitem(sys.modules, "tilelang", None)  # import tilelang raises ImportError
    ok = dict(GDN_DQKWG="auto", GDN_SAVE_STATE="auto", GDN_HEAD_DIM_RATIO="0.75")
    for env in (dict(ok, GDN_DQKWG="0"), dict(ok, GDN_SAVE_STATE="0"), dict(ok, GDN_HEAD_DIM_RATIO="5.0")):
        with pytest.raises(gdn.ConfigError, match="FLA issue 640.*TileLang is not installed"):
            gdn.prepare_mixers(small_args(clean_env, **env), torch.device("cuda"))
    for value in ("auto", "1"):
        if state_op_why is None:
            lines = gdn.prepare_mixers(small_args(clean_env, **dict(ok, GDN_DQKWG=value)), torch.device("cuda"))
            assert gdn.GDN_DQKWG is True and "TileLang not installed, not needed with our dq/dk/dw/dg" in lines[2]
        else:
            with pytest.raises(gdn.ConfigError, match="TileLang is not installed.*state-saving op, not registered"):
                gdn.prepare_mixers(small_args(clean_env, **dict(ok, GDN_DQKWG=value)), torch.device("cuda"))
    monkeypatch.setitem(sys.modules, "tilelang", types.ModuleType("tilelang"))
    lines = gdn.prepare_mixers(small_args(clean_env, GDN_DQKWG="0"), torch.device("cuda"))
    assert "(TileLang backward: Triton 3.6.0 on NVIDIA H200 is in the broken range)" in lines[2]
    assert gdn.GDN_DQKWG is False
