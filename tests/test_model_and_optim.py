"""Model shapes and forward pass against SPEC.md, Newton-Schulz, Muon, the optimiser split, the lr schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SCRIPTS, load_script

BASE = load_script("train_gpt")


def build(mod, monkeypatch=None, **env):
    if monkeypatch is not None:
        for k, v in env.items():
            monkeypatch.setenv(k, str(v))
    args = mod.Hyperparameters()
    mod.prepare_mixers(args, torch.device("cpu"))
    return args, mod.GPT(args)


# ------------------------------------------------------------------------------------------------
# Defaults, parameter counts and inventory
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script,expected", [("train_gpt", 17_059_912), ("train_gpt_gdn", 17_424_332)])
def test_default_parameter_count(clean_env, script, expected):
    torch.manual_seed(0)
    _, model = build(load_script(script))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_default_hyperparameters(clean_env):
    """The script defaults SPEC.md lists."""
    b, h = load_script("train_gpt").Hyperparameters(), load_script("train_gpt_gdn").Hyperparameters()
    for a in (b, h):
        assert (a.iterations, a.train_batch_tokens, a.train_seq_len, a.seed, a.val_batch_size) == \
            (20000, 524288, 1024, 1337, 524288)
        assert (a.qk_gain_init, a.rope_base, a.logit_softcap, a.tied_embed_init_std) == (1.5, 10000.0, 30.0, 0.005)
        assert (a.muon_backend_steps, a.grad_clip_norm, a.vocab_size, a.num_layers) == (5, 0.0, 1024, 9)
        assert (a.num_heads, a.num_kv_heads, a.mlp_mult, a.max_wallclock_seconds) == (8, 4, 2, 600.0)
        assert (a.beta1, a.beta2, a.adam_eps) == (0.9, 0.95, 1e-8)
        assert (a.gdn_expand_v, a.gdn_head_dim_ratio, a.gdn_conv_size, a.gdn_n_heads) == (2.0, 0.75, 4, 0)
    assert (b.model_kind, b.model_dim, b.warmdown_iters, b.gdn_layers_raw) == ("baseline", 512, 1200, "")
    assert (h.model_kind, h.model_dim, h.warmdown_iters, h.gdn_layers_raw) == ("hybrid", 448, 300, "0,1,2,4,5,6,8")


def test_baseline_inventory(clean_env):
    torch.manual_seed(0)
    _, model = build(BASE)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["tok_emb.weight"] == (1024, 512) and shapes["skip_weights"] == (4, 512)
    block = {n.removeprefix("blocks.0."): s for n, s in shapes.items() if n.startswith("blocks.0.")}
    assert block == {
        "mixer.c_q.weight": (512, 512), "mixer.c_k.weight": (256, 512), "mixer.c_v.weight": (256, 512),
        "mixer.proj.weight": (512, 512), "mixer.q_gain": (8,), "mlp.fc.weight": (1024, 512),
        "mlp.proj.weight": (512, 1024), "attn_scale": (512,), "mlp_scale": (512,), "resid_mix": (2, 512)}
    assert len(model.blocks) == 9 and len(shapes) == 2 + 9 * len(block)


def test_hybrid_layout(clean_env):
    torch.manual_seed(0)
    _, model = build(load_script("train_gpt_gdn"))
    kinds = ["gdn" if hasattr(b.mixer, "A_log") else "attn" for b in model.blocks]
    assert kinds == ["gdn", "gdn", "gdn", "attn", "gdn", "gdn", "gdn", "attn", "gdn"]
    attn = model.blocks[3].mixer
    assert (attn.num_heads, attn.num_kv_heads, attn.head_dim) == (8, 4, 56)
    assert tuple(attn.c_k.weight.shape) == (224, 448)
    assert tuple(model.tok_emb.weight.shape) == (1024, 448)


@pytest.mark.parametrize("script", SCRIPTS)
def test_init(clean_env, script):
    mod = load_script(script)
    torch.manual_seed(0)
    args, model = build(mod)
    assert abs(model.tok_emb.weight.std().item() - 0.005) < 2e-4
    for name, p in model.named_parameters():
        if name.endswith(("attn_scale", "mlp_scale", "skip_weights", "o_norm_weight")):
            assert torch.equal(p, torch.ones_like(p)), name
        if name.endswith("resid_mix"):
            assert torch.equal(p[0], torch.ones_like(p[0])) and torch.equal(p[1], torch.zeros_like(p[1])), name
        if name.endswith("q_gain"):
            assert torch.equal(p, torch.full_like(p, 1.5)), name
        if name.endswith(("mixer.proj.weight", "mlp.proj.weight", "o_proj.weight")):
            assert torch.count_nonzero(p) == 0, name  # zero-initialised output projections
        if name.endswith((".c_q.weight", "mlp.fc.weight", "v_proj.weight")):
            assert p.std() > 0.01, name
        assert p.dtype == torch.float32, name


# ------------------------------------------------------------------------------------------------
# Forward pass against a float64 reference written from SPEC.md
# ------------------------------------------------------------------------------------------------


def reference_loss(model: nn.Module, args, ids: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    P = {n: p.detach().double() for n, p in model.named_parameters()}
    eps = torch.finfo(torch.float64).eps

    def rms(x):
        return x / (x.square().mean(-1, keepdim=True) + eps).sqrt()

    def rope(x):  # half-split rotation, base ROPE_BASE, x (B, H, T, D)
        D, T = x.shape[-1], x.shape[-2]
        inv = 1.0 / args.rope_base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
        c, s = ang.cos(), ang.sin()
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat((x1 * c + x2 * s, x2 * c - x1 * s), dim=-1)

    def attn(x, pre):
        B, T, C = x.shape
        H, KV = args.num_heads, args.num_kv_heads
        D = C // H
        q = (x @ P[pre + "c_q.weight"].T).reshape(B, T, H, D).transpose(1, 2)
        k = (x @ P[pre + "c_k.weight"].T).reshape(B, T, KV, D).transpose(1, 2)
        v = (x @ P[pre + "c_v.weight"].T).reshape(B, T, KV, D).transpose(1, 2)
        q, k = rope(rms(q)), rope(rms(k))
        q = q * P[pre + "q_gain"][None, :, None, None]
        k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        y = scores.softmax(-1) @ v
        return y.transpose(1, 2).reshape(B, T, C) @ P[pre + "proj.weight"].T

    def block(x, x0, i):
        pre = f"blocks.{i}."
        x = P[pre + "resid_mix"][0] * x + P[pre + "resid_mix"][1] * x0
        x = x + P[pre + "attn_scale"] * attn(rms(x), pre + "mixer.")
        h = torch.relu(rms(x) @ P[pre + "mlp.fc.weight"].T).square() @ P[pre + "mlp.proj.weight"].T
        return x + P[pre + "mlp_scale"] * h

    E = P["tok_emb.weight"]
    x = x0 = rms(E[ids])
    n_enc = args.num_layers // 2
    skips = []
    for i in range(n_enc):
        x = block(x, x0, i)
        skips.append(x)
    for j in range(args.num_layers - n_enc):
        if skips:
            x = x + P["skip_weights"][j] * skips.pop()
        x = block(x, x0, n_enc + j)
    logits = rms(x) @ E.T
    logits = args.logit_softcap * torch.tanh(logits / args.logit_softcap)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1))


@pytest.mark.parametrize("num_layers,native_gqa", [(4, True), (5, True), (4, False)])
def test_forward_matches_spec_reference(clean_env, num_layers, native_gqa):
    # native_gqa=False: the path for SDPA backends without enable_gqa (K/V heads repeated before SDPA).
    clean_env.setattr(BASE, "SDPA_NATIVE_GQA", native_gqa)
    args, model = build(BASE, clean_env, MODEL_DIM=32, NUM_HEADS=4, NUM_KV_HEADS=2, NUM_LAYERS=num_layers,
                        VOCAB_SIZE=64, LOGIT_SOFTCAP=5.0)
    torch.manual_seed(1)
    with torch.no_grad():  # move every parameter off its init so that each term of the forward matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        model.tok_emb.weight.mul_(30)  # logits large enough for the soft-cap to bite
    ids = torch.randint(0, 64, (2, 24))
    tgt = torch.randint(0, 64, (2, 24))
    loss = model.double()(ids, tgt)
    ref = reference_loss(model, args, ids, tgt)
    assert loss.dtype == torch.float32  # SPEC: the logits and the loss are computed in fp32
    assert abs(loss.item() - ref.item()) < 1e-5 * max(1.0, ref.item())


@pytest.mark.parametrize("native_gqa", [True, False])
def test_attention_keeps_token_major_layout(clean_env, native_gqa):
    """v16: q, k (and SDPA's output, which follows q's layout) stay (B, T, H, D) in memory, so the output's
    transpose+reshape before the projection is a view: with (B, H, T, D) data it was a copy per layer (and a second
    saved activation) on CUDA. Checked on the eager SDPA call of the script's attention."""
    clean_env.setattr(BASE, "SDPA_NATIVE_GQA", native_gqa)
    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kw):
        y = sdpa(q, k, v, **kw)
        seen.append((q, k, y))
        return y

    clean_env.setattr(BASE.F, "scaled_dot_product_attention", recording_sdpa)
    att = BASE.CausalSelfAttention(64, 4, 2, 10000.0, 1.5)
    x = torch.randn(2, 16, 64, requires_grad=True)
    att(x).sum().backward()
    (q, k, y), = seen
    assert q.transpose(1, 2).is_contiguous() and y.transpose(1, 2).is_contiguous()
    if native_gqa:
        assert k.transpose(1, 2).is_contiguous()
    assert y.transpose(1, 2).reshape(2, 16, 64).data_ptr() == y.data_ptr()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_model_is_causal(clean_env):
    args, model = build(BASE, clean_env, MODEL_DIM=32, NUM_HEADS=4, NUM_KV_HEADS=2, NUM_LAYERS=3, VOCAB_SIZE=64)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ids = torch.randint(0, 64, (1, 20))
    ids2 = ids.clone()
    ids2[0, 15:] = (ids2[0, 15:] + 1) % 64
    tgt = torch.zeros_like(ids)
    with torch.no_grad():  # per-position losses through the reduction: target 0 everywhere, compare prefix
        l1 = torch.stack([model(ids[:, : t + 1], tgt[:, : t + 1]) for t in range(20)])
        l2 = torch.stack([model(ids2[:, : t + 1], tgt[:, : t + 1]) for t in range(20)])
    assert torch.allclose(l1[:15], l2[:15], rtol=0, atol=1e-6)
    assert not torch.allclose(l1[15:], l2[15:])


def test_initial_loss_is_uniform(clean_env):
    """Zero-init output projections + a 0.005-std tied embedding: logits ~ 0, loss ~ ln(vocab)."""
    _, model = build(BASE, clean_env, MODEL_DIM=64, NUM_HEADS=4, NUM_KV_HEADS=2, NUM_LAYERS=2)
    torch.manual_seed(3)
    ids, tgt = torch.randint(0, 1024, (2, 32)), torch.randint(0, 1024, (2, 32))
    assert abs(model(ids, tgt).item() - math.log(1024)) < 0.01


# ------------------------------------------------------------------------------------------------
# Newton-Schulz and Muon
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (96, 48), (48, 96), (200, 30), (8, 8)])
def test_newton_schulz_near_orthogonal(shape):
    """The quintic iteration pushes every singular value into roughly [0.7, 1.2] (not exactly 1: the
    coefficients trade exactness for speed) while keeping the singular vectors of G."""
    torch.manual_seed(sum(shape))
    G = torch.randn(*shape) * 3.7
    X = BASE.zeropower_via_newtonschulz5(G, steps=5)
    assert X.shape == G.shape and X.dtype == torch.float32
    s = torch.linalg.svdvals(X.double())
    assert s.min() > 0.5 and s.max() < 1.5, s
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    core = U.T @ X.double() @ Vh.T  # diagonal when X shares G's singular vectors
    off = core - torch.diag(torch.diagonal(core))
    assert off.norm() < 1e-3 * core.norm()
    # Scale-invariant, and the transpose of the result for the transposed input.
    assert torch.allclose(BASE.zeropower_via_newtonschulz5(G * 1e-3), X, atol=1e-4)
    if shape[0] != shape[1]:  # both orientations iterate on the same wide matrix
        assert torch.equal(BASE.zeropower_via_newtonschulz5(G.T), X.T)


def test_newton_schulz_coefficients_by_one_step():
    """One step from a scaled identity-like matrix: sigma -> a s + b s^3 + c s^5 with SPEC's coefficients."""
    G = torch.diag(torch.tensor([3.0, 4.0]))  # Frobenius norm 5: singular values 0.6 and 0.8 after scaling
    X = BASE.zeropower_via_newtonschulz5(G, steps=1)
    for s, x in ((0.6, X[0, 0]), (0.8, X[1, 1])):
        assert abs(x.item() - (3.4445 * s - 4.7750 * s ** 3 + 2.0315 * s ** 5)) < 1e-5


def test_muon_update_rule():
    """Muon: buf = m buf + g; update = NS5(g + m buf) * sqrt(max(1, rows/cols)); p -= lr update."""
    torch.manual_seed(0)
    tall = nn.Parameter(torch.randn(48, 16))
    wide = nn.Parameter(torch.randn(16, 40))
    lr, m = 0.05, 0.9
    opt = BASE.Muon([tall, wide], lr=lr, momentum=m, backend_steps=5)
    start = [tall.detach().clone(), wide.detach().clone()]
    grads1 = [torch.randn_like(tall), torch.randn_like(wide)]
    grads2 = [torch.randn_like(tall), torch.randn_like(wide)]
    for p, g in zip((tall, wide), grads1):
        p.grad = g.clone()
    opt.step()
    after1 = [tall.detach().clone(), wide.detach().clone()]
    for p, g in zip((tall, wide), grads2):
        p.grad = g.clone()
    opt.step()
    ns = BASE.zeropower_via_newtonschulz5
    for i, (p, p0, p1, g1, g2) in enumerate(zip((tall, wide), start, after1, grads1, grads2)):
        rows, cols = p.shape
        sc = max(1.0, rows / cols) ** 0.5
        assert p.shape == p0.shape and not torch.equal(p.detach(), p0)
        exp1 = p0 - lr * sc * ns(g1 + m * g1)
        assert torch.allclose(p1, exp1, atol=1e-6), i
        buf = m * g1 + g2
        exp2 = p1 - lr * sc * ns(g2 + m * buf)
        assert torch.allclose(p.detach(), exp2, atol=1e-6), i


def test_newton_schulz_batched_equals_per_matrix():
    """A stack of same-shaped matrices (Muon's batched path) gives each matrix's own result: each is
    normalised by its own Frobenius norm."""
    torch.manual_seed(5)
    for shape in ((3, 24, 10), (4, 10, 24)):
        G = torch.randn(*shape) * torch.tensor([0.01, 1.0, 50.0, 3.0][:shape[0]])[:, None, None]
        X = BASE.zeropower_via_newtonschulz5(G)
        for i in range(shape[0]):
            assert torch.allclose(X[i], BASE.zeropower_via_newtonschulz5(G[i]), rtol=1e-5, atol=1e-6), (shape, i)


def test_muon_batches_shapes_like_per_matrix():
    """Several matrices of one shape among others: the batched step equals orthogonalising each alone."""
    torch.manual_seed(6)
    shapes = [(12, 8), (8, 12), (12, 8), (5, 8), (12, 8), (8, 12)]
    params = [nn.Parameter(torch.randn(*sh)) for sh in shapes]
    ref = [p.detach().clone() for p in params]
    lr, m = 0.03, 0.9
    opt = BASE.Muon(params, lr=lr, momentum=m, backend_steps=5)
    for p in params:
        p.grad = torch.randn_like(p)
    grads = [p.grad.clone() for p in params]
    opt.step()
    for i, (p, r, g) in enumerate(zip(params, ref, grads)):
        sc = max(1.0, r.size(0) / r.size(1)) ** 0.5
        exp = r - lr * sc * BASE.zeropower_via_newtonschulz5(g + m * g)
        assert torch.allclose(p.detach(), exp, atol=1e-6), i


def test_muon_skips_params_without_grad():
    a, b = nn.Parameter(torch.randn(8, 4)), nn.Parameter(torch.randn(4, 8))
    opt = BASE.Muon([a, b], lr=0.1, momentum=0.95, backend_steps=5)
    a0, b0 = a.detach().clone(), b.detach().clone()
    b.grad = torch.randn_like(b)
    opt.step()
    assert torch.equal(a.detach(), a0) and not torch.equal(b.detach(), b0)


# ------------------------------------------------------------------------------------------------
# Optimiser split
# ------------------------------------------------------------------------------------------------


CONTROL_SUFFIXES = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights", "A_log", "dt_bias",
                    "o_norm_weight", "q_conv", "k_conv", "v_conv")


def expected_split(model: nn.Module) -> dict[str, set[str]]:
    """SPEC.md: embedding -> Adam (TIED_EMBED_LR); every 2-D linear weight inside the blocks -> Muon;
    everything else (vectors, scalars, control tensors incl. resid_mix and the conv kernels) -> Adam (SCALAR_LR)."""
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = [n for n, _ in model.named_parameters()]
    matrix = {n for n in names if n.startswith("blocks.") and n in linear}
    return {"embed": {"tok_emb.weight"}, "matrix": matrix, "scalar": set(names) - matrix - {"tok_emb.weight"}}


@pytest.mark.parametrize("script", SCRIPTS)
def test_optimizer_split(clean_env, script):
    mod = load_script(script)
    for k, v in dict(TIED_EMBED_LR="0.031", MATRIX_LR="0.021", SCALAR_LR="0.011").items():
        clean_env.setenv(k, v)
    args, model = build(mod)
    groups = mod.split_params(model)
    got = {k: {n for n, _ in v} for k, v in groups.items()}
    want = expected_split(model)
    assert got == want
    all_names = [n for n, _ in model.named_parameters()]
    assert sorted(n for v in got.values() for n in v) == sorted(all_names)  # each exactly once
    scalar_kinds = {s for s in CONTROL_SUFFIXES if any(n.endswith(s) for n in got["scalar"])}
    expected_kinds = set(CONTROL_SUFFIXES[:5]) | (set(CONTROL_SUFFIXES[5:]) if script == "train_gpt_gdn" else set())
    assert scalar_kinds == expected_kinds
    assert all(p.ndim == 2 for _, p in groups["matrix"])
    if script == "train_gpt_gdn":
        assert "blocks.0.mixer.a_proj.weight" in got["matrix"] and "blocks.0.mixer.q_conv" in got["scalar"]

    opts = mod.build_optimizers(model, args, fused=False)
    assert [type(o).__name__ for o in opts] == ["Adam", "Muon", "Adam"]
    ids = [[id(p) for g in o.param_groups for p in g["params"]] for o in opts]
    flat = [i for lst in ids for i in lst]
    assert len(flat) == len(set(flat)) == len(all_names)
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert [{by_id[i] for i in lst} for lst in ids] == [want["embed"], want["matrix"], want["scalar"]]
    assert [o.param_groups[0]["lr"] for o in opts] == [0.031, 0.021, 0.011]
    assert [o.param_groups[0]["base_lr"] for o in opts] == [0.031, 0.021, 0.011]
    for o in (opts[0], opts[2]):
        assert o.param_groups[0]["betas"] == (0.9, 0.95) and o.param_groups[0]["eps"] == 1e-8


def test_training_steps_change_every_group(clean_env):
    """A few optimiser steps on a tiny model move parameters of all three groups and lower the loss."""
    args, model = build(BASE, clean_env, MODEL_DIM=32, NUM_HEADS=4, NUM_KV_HEADS=2, NUM_LAYERS=2, VOCAB_SIZE=64)
    opts = BASE.build_optimizers(model, args, fused=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.arange(64).repeat(2)[None, :96]
    first = None
    for _ in range(5):
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss = model(ids[:, :-1], ids[:, 1:])
        first = loss.item() if first is None else first
        loss.backward()
        for o in opts:
            o.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert {"tok_emb.weight", "blocks.0.mixer.c_q.weight", "blocks.0.attn_scale", "skip_weights"} <= changed
    assert model(ids[:, :-1], ids[:, 1:]).item() < first


# ------------------------------------------------------------------------------------------------
# Learning-rate schedule
# ------------------------------------------------------------------------------------------------


def test_lr_multiplier_by_steps(clean_env):
    clean_env.setenv("ITERATIONS", "100")
    clean_env.setenv("WARMDOWN_ITERS", "20")
    args = BASE.Hyperparameters()
    f = [BASE.lr_multiplier(args, s, 0.0, None) for s in range(101)]
    assert f[:80] == [1.0] * 80
    assert f[90] == pytest.approx(0.5) and f[100] == 0.0 and f[81] == pytest.approx(19 / 20)
    assert all(a >= b for a, b in zip(f, f[1:]))


def test_lr_multiplier_by_wallclock(clean_env):
    clean_env.setenv("WARMDOWN_ITERS", "10")
    args = BASE.Hyperparameters()
    # 10 ms per step so far, a 1000 ms cap: warm-down over the last 10 * 10 = 100 ms.
    assert BASE.lr_multiplier(args, 50, 500.0, 1000.0) == 1.0
    assert BASE.lr_multiplier(args, 90, 900.0, 1000.0) == pytest.approx(1.0)
    assert BASE.lr_multiplier(args, 95, 950.0, 1000.0) == pytest.approx(0.5)
    assert BASE.lr_multiplier(args, 100, 1000.0, 1000.0) == 0.0
    assert BASE.lr_multiplier(args, 100, 1200.0, 1000.0) == 0.0


def test_lr_multiplier_without_warmdown(clean_env):
    clean_env.setenv("WARMDOWN_ITERS", "0")
    args = BASE.Hyperparameters()
    assert BASE.lr_multiplier(args, 19999, 0.0, None) == 1.0
    assert BASE.lr_multiplier(args, 10, 599_000.0, 600_000.0) == 1.0

# ------------------------------------------------------------------------------------------------
# SplitLinear: the fused projections (attention q|k|v, GDN q|k|v|gate|a|b)
# ------------------------------------------------------------------------------------------------


def test_split_linear_matches_linear_then_split():
    """SplitLinear (one matmul forward, per-piece matmuls backward) == F.linear(x, cat(w)).split: outputs and
    gradients in float64 (gradcheck), and compiled as one graph (fullgraph) to the same gradients."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    ws = [torch.randn(n, 7, dtype=torch.float64, requires_grad=True) for n in (6, 3, 2)]
    assert torch.autograd.gradcheck(lambda x, *w: BASE.SplitLinear.apply(x, *w), (x, *ws))

    def loss(pieces):  # a different function of each piece, so a swapped gradient would show
        return sum(t.sin().sum() * (i + 1) for i, t in enumerate(pieces))

    ref = torch.autograd.grad(loss(F.linear(x, torch.cat(ws)).split([6, 3, 2], dim=-1)), (x, *ws))
    for fn in (lambda x, *w: loss(BASE.SplitLinear.apply(x, *w)),
               torch.compile(lambda x, *w: loss(BASE.SplitLinear.apply(x, *w)), fullgraph=True)):
        got = torch.autograd.grad(fn(x, *ws), (x, *ws))
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compiled", [False, True])
def test_split_linear_under_autocast(compiled):
    """Under bf16 autocast with fp32 x and weights (the training path: the residual stream is fp32) SplitLinear
    gives autocast's linear-then-split output exactly and its gradients to bf16 rounding, each in fp32."""
    torch.manual_seed(1)
    x = torch.randn(3, 40, 48, requires_grad=True)
    ws = [torch.randn(n, 48, requires_grad=True) for n in (24, 16, 8)]

    def run(fn):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pieces = fn(x, *ws)
            loss = sum((t.float().sin() * (i + 1)).sum() for i, t in enumerate(pieces))
        return [p.detach() for p in pieces], torch.autograd.grad(loss, (x, *ws))

    fn = lambda x, *w: BASE.SplitLinear.apply(x, *w)  # noqa: E731
    torch._dynamo.reset()
    out, grads = run(torch.compile(fn, fullgraph=True) if compiled else fn)
    ref_out, ref_grads = run(lambda x, *w: F.linear(x, torch.cat(w)).split([24, 16, 8], dim=-1))
    for a, b in zip(out, ref_out):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)
    for a, b in zip(grads, ref_grads):
        assert a.dtype == torch.float32
        assert ((a - b).norm() / b.norm()).item() < 1e-2


# ------------------------------------------------------------------------------------------------
# Gradient accumulation over micro-steps (one process)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_grad_sum_matches_backward(clean_env, monkeypatch, script):
    """GradSum's foreach copy/adds give each parameter the same gradient, to the bit, as `.backward()`
    accumulating over the micro-steps, every parameter included (each gradient checked non-zero); its first
    micro-step overwrites the previous step's sums (no zero_grad in the loop)."""
    mod = load_script(script)
    env = dict(MODEL_DIM=64, NUM_HEADS=4, NUM_KV_HEADS=2, NUM_LAYERS=4)
    if script == "train_gpt_gdn":
        env.update(GDN_LAYERS="0,1,3", GDN_IMPL="torch")
    torch.manual_seed(0)
    args, model = build(mod, monkeypatch, **env)
    with torch.no_grad():  # away from the zero-initialised projections, so every gradient is non-zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.tok_emb.to(torch.bfloat16)  # two dtypes among the grads, as on CUDA
    micro = [(torch.randint(0, 1024, (2, 32)), torch.randint(0, 1024, (2, 32))) for _ in range(3)]
    for x, y in micro:
        (model(x, y) / 3).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g.abs().sum() > 0 for g in want.values())
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)  # stale sums of a previous step
    grad_sum = mod.GradSum(model.parameters())
    for i, (x, y) in enumerate(micro):
        grad_sum.backward(model(x, y) / 3, first=i == 0)
    for n, p in model.named_parameters():
        assert p.grad.dtype == p.dtype and torch.equal(p.grad, want[n]), n


def test_grad_sum_leaves_unused_parameters_alone(clean_env, monkeypatch):
    """NUM_LAYERS=1 has an empty skip_weights outside the graph: GradSum runs (allow_unused) and its grad stays
    as allocated, as `.backward()` leaves an unused parameter's grad."""
    torch.manual_seed(0)
    _, model = build(BASE, monkeypatch, MODEL_DIM=64, NUM_HEADS=4, NUM_KV_HEADS=2, NUM_LAYERS=1)
    grad_sum = BASE.GradSum(model.parameters())
    x = torch.randint(0, 1024, (2, 16))
    grad_sum.backward(model(x, x), first=True)
    assert model.skip_weights.numel() == 0 and model.skip_weights.grad is not None
    assert model.tok_emb.weight.grad.abs().sum() > 0
