"""int8 + zlib export (quantize/dequantize) and the val_bpb byte accounting and evaluation."""

from __future__ import annotations

import io
import math
import zlib

import pytest
import torch

from conftest import TOKENIZER, load_script, needs_tokenizer

BASE = load_script("train_gpt")


# ------------------------------------------------------------------------------------------------
# Quantisation
# ------------------------------------------------------------------------------------------------


def sample_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    big = torch.randn(300, 256, generator=g)  # 76800 > 65536 elements: int8 per row
    big[7, 3] = 40.0  # an outlier: its row's clip (a high quantile of |w|) is far above the rest
    big[11] = 0.0  # an all-zero row
    return {
        "tok_emb.weight": big,
        "blocks.0.mlp.fc.weight": torch.randn(256, 256, generator=g) * 0.02,  # exactly 65536: kept, fp16
        "blocks.0.mixer.c_q.weight": torch.randn(100, 64, generator=g),  # small matrix: kept, fp16
        "blocks.0.attn_scale": torch.rand(64, generator=g) + 0.5,  # control: kept, fp32
        "blocks.0.resid_mix": torch.randn(2, 64, generator=g),
        "blocks.1.mixer.A_log": torch.randn(8, generator=g),
        "blocks.1.mixer.q_conv": torch.randn(48, 4, generator=g),
        "skip_weights": torch.randn(2, 64, generator=g),
        "long_vector": torch.randn(70_000, generator=g),  # big, not 2-D: one scale for the tensor
        "bf16_matrix": torch.randn(512, 200, generator=g).bfloat16(),
        "step_count": torch.tensor([3, 4, 5], dtype=torch.int64),  # non-float: passes through
    }


def test_quantize_format():
    state = sample_state()
    obj, stats = BASE.quantize_state_dict_int8(state)
    assert obj["format"] == "int8_per_row_v1"
    assert set(obj["quantized"]) == {"tok_emb.weight", "long_vector", "bf16_matrix"}
    assert set(obj["quantized"]) | set(obj["passthrough"]) == set(state)
    assert not set(obj["quantized"]) & set(obj["passthrough"])
    for name in ("tok_emb.weight", "bf16_matrix"):
        q, s = obj["quantized"][name], obj["scales"][name]
        assert q.dtype == torch.int8 and q.shape == state[name].shape
        assert s.dtype == torch.float16 and s.shape == (state[name].shape[0], 1)
        assert q.abs().max() <= 127
    assert obj["scales"]["long_vector"].shape == (1,) and obj["scales"]["long_vector"].dtype == torch.float16
    pt = obj["passthrough"]
    for name in ("blocks.0.attn_scale", "blocks.0.resid_mix", "blocks.1.mixer.A_log", "blocks.1.mixer.q_conv",
                 "skip_weights"):
        assert pt[name].dtype == torch.float32 and torch.equal(pt[name], state[name]), name
    for name in ("blocks.0.mlp.fc.weight", "blocks.0.mixer.c_q.weight"):
        assert pt[name].dtype == torch.float16 and torch.equal(pt[name], state[name].half()), name
    assert torch.equal(pt["step_count"], state["step_count"]) and pt["step_count"].dtype == torch.int64
    assert obj["dtypes"]["bf16_matrix"] == "bfloat16" and obj["dtypes"]["tok_emb.weight"] == "float32"
    assert "step_count" not in obj["dtypes"]
    # Byte accounting: int8 payload + fp16 scales + the kept tensors as stored.
    payload = sum(q.numel() + 2 * obj["scales"][n].numel() for n, q in obj["quantized"].items())
    payload += sum(t.numel() * t.element_size() for t in pt.values())
    assert stats["payload_bytes"] == payload
    assert stats["baseline_bytes"] == sum(t.numel() * t.element_size() for t in state.values())


def test_quantize_error_bound():
    state = sample_state()
    obj, _ = BASE.quantize_state_dict_int8(state)
    deq = BASE.dequantize_state_dict_int8(obj)
    assert set(deq) == set(state)
    for name, t in state.items():
        assert deq[name].dtype == t.dtype and deq[name].shape == t.shape, name
    for name in ("tok_emb.weight", "bf16_matrix", "long_vector"):
        w = state[name].float()
        scale = obj["scales"][name].float()
        if w.ndim == 2:
            clip = torch.quantile(w.abs(), 0.9999984, dim=1, keepdim=True)
        else:
            clip = torch.quantile(w.abs(), 0.9999984).reshape(1)
        d = deq[name].float() if name != "bf16_matrix" else (obj["quantized"][name].float() * scale)
        inside = w.abs() <= clip
        err = (w - d).abs()
        # Rounding to the nearest multiple of the stored scale: at most half a step inside the clip.
        assert (err <= (scale / 2 + 1e-6 * scale + 1e-12).expand_as(w))[inside].all(), name
        # Outside the clip: clamped to the clip, sign kept.
        outside = ~inside
        if outside.any():
            assert (d[outside].abs() <= (127 * scale).expand_as(w)[outside] + 1e-6).all()
            assert (torch.sign(d[outside]) == torch.sign(w[outside])).all()
        assert torch.allclose(scale, (clip / 127).clamp_min(1e-7).half().float()), name
    # Per-row scales: the outlier row has a larger scale than the others, the zero row dequantises to zero.
    s = obj["scales"]["tok_emb.weight"].float().squeeze(1)
    assert s[7] > 5 * s.median()
    assert torch.count_nonzero(deq["tok_emb.weight"][11]) == 0
    big = state["tok_emb.weight"]
    rel = ((deq["tok_emb.weight"] - big).norm() / big.norm()).item()
    assert rel < 0.02


def test_dequantize_rejects_unknown_format():
    obj, _ = BASE.quantize_state_dict_int8({"w": torch.randn(3)})
    obj["format"] = "something_else"
    with pytest.raises(ValueError, match="format"):
        BASE.dequantize_state_dict_int8(obj)


@pytest.mark.parametrize("script", ["train_gpt", "train_gpt_gdn"])
def test_zlib_round_trip_into_model(clean_env, script):
    mod = load_script(script)
    for k, v in dict(MODEL_DIM="128", NUM_HEADS="4", NUM_KV_HEADS="2", NUM_LAYERS="4", GDN_LAYERS="0,1,3"
                     if script == "train_gpt_gdn" else "").items():
        clean_env.setenv(k, v)
    args = mod.Hyperparameters()
    mod.prepare_mixers(args, torch.device("cpu"))
    torch.manual_seed(0)
    model = mod.GPT(args)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    obj, _ = mod.quantize_state_dict_int8(state)
    assert "tok_emb.weight" in obj["quantized"]  # 1024 x 128 > 65536
    blob = zlib.compress(mod.serialize(obj), level=9)
    loaded = torch.load(io.BytesIO(zlib.decompress(blob)), map_location="cpu")
    deq_direct = mod.dequantize_state_dict_int8(obj)
    deq = mod.dequantize_state_dict_int8(loaded)
    fresh = mod.GPT(args)
    fresh.load_state_dict(deq, strict=True)
    for name, t in fresh.state_dict().items():
        assert t.dtype == state[name].dtype
        assert torch.equal(t, deq_direct[name]), name
        assert torch.allclose(t, state[name], rtol=0, atol=0.02 * state[name].abs().max().item() + 1e-3), name
    ids = torch.randint(0, 1024, (2, 64))
    with torch.no_grad():
        assert abs(fresh(ids, ids).item() - model(ids, ids).item()) < 0.05


def test_atomic_write(tmp_path):
    path = tmp_path / "final_model.pt"
    path.write_bytes(b"old")
    BASE.atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["final_model.pt"]


# ------------------------------------------------------------------------------------------------
# Byte accounting for val_bpb
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp():
    if not TOKENIZER.is_file():
        pytest.skip(f"real tokenizer missing: {TOKENIZER}")
    return BASE.load_tokenizer(str(TOKENIZER), 1024)


def target_bytes(ids: list[int], luts, prev_first: int) -> int:
    prev = torch.tensor([prev_first] + ids[:-1])
    return int(BASE.count_target_bytes(prev, torch.tensor(ids), luts).sum())


@needs_tokenizer
def test_luts_real_tokenizer_facts(sp):
    base, space, boundary = BASE.build_byte_luts(sp, 1024)
    assert base.shape == space.shape == boundary.shape == (1024,)
    assert boundary[:4].all() and not boundary[4:].any()  # pad, bos, eos, unk
    assert (base[:4] == 0).all() and not space[:4].any()
    assert sp.IdToPiece(4) == "\u2581t" and space[4] and base[4] == 1


@needs_tokenizer
@pytest.mark.parametrize("text", [
    "hello world 123",
    "The quick brown fox jumps over the lazy dog. It was 1999!",
    "Prices rose 12.5% in 2024 \u2014 a record.",  # em dash: a 3-byte piece of the vocabulary
    "x",
])
def test_bytes_equal_utf8_length(sp, text):
    """For text the tokenizer reproduces exactly (no unknown pieces), the bytes of the targets after a boundary
    token equal the UTF-8 length: each '▁' is one space byte, and no dummy prefix is added at the start."""
    ids = sp.encode(text)
    assert sp.decode(ids) == text and 3 not in ids
    luts = BASE.build_byte_luts(sp, 1024)
    assert target_bytes(ids, luts, prev_first=1) == len(text.encode("utf-8"))
    # Two documents separated by BOS: the BOS target counts 0 bytes and the next document starts afresh.
    both = ids + [1] + ids
    assert target_bytes(both, luts, prev_first=1) == 2 * len(text.encode("utf-8"))


@needs_tokenizer
def test_bytes_with_unknown_characters(sp):
    """'ï', 'é' and '東京' are not in the vocabulary (no byte fallback): each becomes <unk>, which counts
    0 bytes and is a boundary, so the space piece after it does not count either."""
    text = "na\u00efve caf\u00e9 \u2014 \u6771\u4eac"
    ids = sp.encode(text)
    assert ids.count(3) == 3
    luts = BASE.build_byte_luts(sp, 1024)
    unknown = len("\u00ef".encode()) + len("\u00e9".encode()) + len("\u6771\u4eac".encode())  # 2 + 2 + 6
    space_after_unknown = 1  # the space after 'café'
    assert target_bytes(ids, luts, prev_first=1) == len(text.encode("utf-8")) - unknown - space_after_unknown
    assert target_bytes(ids, luts, prev_first=1) == 12


@needs_tokenizer
def test_leading_space_piece_after_boundary(sp):
    world = sp.PieceToId("\u2581world")
    hello = sp.PieceToId("hello") if sp.PieceToId("hello") != 3 else sp.encode("hello")[-1]
    assert world != 3
    luts = BASE.build_byte_luts(sp, 1024)
    assert target_bytes([world], luts, prev_first=1) == 5  # after BOS: the space is not counted
    assert target_bytes([world], luts, prev_first=hello) == 6  # mid-text: ' world'


class FakeSP:
    """The few SentencePieceProcessor methods build_byte_luts uses, over a made-up vocabulary."""

    PIECES = ["<pad>", "<s>", "<unk>", "<0x41>", "\u2581ab", "c\u00e9", "\u2581", "x", "<unused>"]

    def vocab_size(self):
        return len(self.PIECES)

    def IdToPiece(self, i):
        return self.PIECES[i]

    def IsControl(self, i):
        return i in (0, 1)

    def IsUnknown(self, i):
        return i == 2

    def IsUnused(self, i):
        return i == 8

    def IsByte(self, i):
        return i == 3


def test_luts_fake_vocab():
    base, space, boundary = BASE.build_byte_luts(FakeSP(), 10)  # LUTs may be larger than the vocabulary
    assert base.tolist() == [0, 0, 0, 1, 2, 3, 0, 1, 0, 0]
    assert space.tolist() == [False, False, False, False, True, False, True, False, False, False]
    assert boundary.tolist() == [True, True, True, False, False, False, False, False, True, True]
    luts = (base, space, boundary)
    prev = torch.tensor([1, 4, 5, 6, 2, 8, 7])
    tgt = torch.tensor([4, 5, 6, 4, 6, 4, 3])
    # '▁ab' after BOS: 2; 'cé': 3; '▁' after 'cé': 1; '▁ab' after '▁': 3; '▁' after <unk>: 0;
    # '▁ab' after <unused>: 2; byte token: 1.
    assert BASE.count_target_bytes(prev, tgt, luts).tolist() == [2, 3, 1, 3, 0, 2, 1]


# ------------------------------------------------------------------------------------------------
# eval_val
# ------------------------------------------------------------------------------------------------


def tiny_perturbed_model(clean_env, val_batch_size: int):
    """A 2-layer baseline (TRAIN_SEQ_LEN 16) with every weight moved off its init (zero-init hides errors)."""
    for k, v in dict(MODEL_DIM="32", NUM_HEADS="4", NUM_KV_HEADS="2", NUM_LAYERS="2", TRAIN_SEQ_LEN="16",
                     VAL_BATCH_SIZE=str(val_batch_size)).items():
        clean_env.setenv(k, v)
    args = BASE.Hyperparameters()
    torch.manual_seed(0)
    model = BASE.GPT(args)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return args, model


@needs_tokenizer
@pytest.mark.parametrize("val_batch_size", [256, 2048])  # 2 sequences per batch (ragged last), or all at once
def test_eval_val_matches_hand_computation(clean_env, sp, val_batch_size):
    args, model = tiny_perturbed_model(clean_env, val_batch_size)
    text = ("Gated DeltaNet layers replace most attention layers in the hybrid; the baseline keeps them all. "
            "Which one learns more per second at 16384 tokens of context?")
    ids = sp.encode(text) * 3
    val = torch.tensor([1] + ids[: 5 * 16], dtype=torch.int32)  # 5 sequences of 16 + 1
    assert val.numel() == 81
    luts = BASE.build_byte_luts(sp, 1024)
    loss, bpb = BASE.eval_val(model, args, val, luts, 0, 1, 8, torch.device("cpu"))
    assert model.training  # eval_val puts the model back in training mode

    x, y = val[:-1].long().reshape(5, 16), val[1:].long().reshape(5, 16)
    with torch.no_grad():
        ref_loss = model(x, y).item()  # mean over all 80 targets
    n_bytes = 0
    for prev, tgt in zip(val[:-1].tolist(), val[1:].tolist()):
        piece = sp.IdToPiece(tgt)
        if tgt in (0, 1, 2, 3):
            continue
        if piece.startswith("\u2581"):
            n_bytes += len(piece[1:].encode()) + (prev not in (0, 1, 2, 3))
        else:
            n_bytes += len(piece.encode())
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert bpb == pytest.approx(ref_loss / math.log(2) * 80 / n_bytes, rel=1e-6)
    assert n_bytes == len(sp.decode(val[1:].tolist()).encode("utf-8"))  # no unknowns, no leading space


@needs_tokenizer
def test_eval_val_rank_split(clean_env, sp):
    """Ranks evaluate disjoint, contiguous runs of sequences that together cover the split."""
    args, model = tiny_perturbed_model(clean_env, 128)
    ids = sp.encode("one two three four five six seven eight nine ten eleven twelve " * 12)
    val = torch.tensor(ids[: 7 * 16 + 1], dtype=torch.int32)
    luts = BASE.build_byte_luts(sp, 1024)
    cpu = torch.device("cpu")
    full_loss, _ = BASE.eval_val(model, args, val, luts, 0, 1, 8, cpu)
    l0, _ = BASE.eval_val(model, args, val, luts, 0, 2, 4, cpu)  # sequences 0..2
    l1, _ = BASE.eval_val(model, args, val, luts, 1, 2, 4, cpu)  # sequences 3..6
    assert (3 * l0 + 4 * l1) / 7 == pytest.approx(full_loss, rel=1e-6)
    with torch.no_grad():
        x, y = val[:-1].long().reshape(7, 16), val[1:].long().reshape(7, 16)
        assert l0 == pytest.approx(model(x[:3], y[:3]).item(), rel=1e-6)


@needs_tokenizer
@pytest.mark.parametrize("script", ["train_gpt", "train_gpt_gdn"])
def test_eval_val_runs_without_autograd(clean_env, sp, script):
    """Evaluation builds no autograd graph (eval_val is under torch.no_grad: under CUDA graphs a grad-mode forward
    would record a training graph, saved activations included, per eval shape): every forward of eval_val runs
    with grad disabled, and grad mode is back on afterwards."""
    mod = BASE if script == "train_gpt" else load_script(script)
    for k, v in dict(MODEL_DIM="32", NUM_HEADS="4", NUM_KV_HEADS="2", NUM_LAYERS="2", TRAIN_SEQ_LEN="16",
                     VAL_BATCH_SIZE="256", GDN_LAYERS="0").items():
        clean_env.setenv(k, v)
    if script == "train_gpt":
        clean_env.delenv("GDN_LAYERS")
    args = mod.Hyperparameters()
    model = mod.GPT(args)
    seen: list[bool] = []
    model.register_forward_hook(lambda m, inp, out: seen.append((torch.is_grad_enabled(), out.requires_grad)))
    val = torch.tensor(sp.encode("a few words of validation text, repeated " * 8)[: 3 * 16 + 1], dtype=torch.int32)
    mod.eval_val(model, args, val, mod.build_byte_luts(sp, 1024), 0, 1, 8, torch.device("cpu"))
    assert seen == [(False, False), (False, False)]  # two batches (2 + 1 sequences), no graph in either
    assert torch.is_grad_enabled()
