"""The two training scripts share their code by design: everything but the GDN section, SCRIPT_DEFAULTS,
make_mixer/prepare_mixers, the docstring and `import inspect`, `import re` must be identical, in source and in behaviour."""

from __future__ import annotations

import ast

import numpy as np
import pytest
import torch

from conftest import REPO, load_script, needs_tokenizer, TOKENIZER, write_shard

ALLOWED_DIFFERENT = {"make_mixer", "prepare_mixers", "SCRIPT_DEFAULTS"}
GDN_SECTION = {"parse_gdn_layers", "gdn_dims", "l2_normalize", "gated_delta_rule_chunked", "gated_delta_rule_fla",
               "fla_gated_delta_rule_public", "register_fla_gdn_op", "GDN_OP", "build_conv_kernels",
               "register_conv_op", "CONV_OP", "conv1d_silu", "causal_conv1d_silu", "GatedDeltaNet",
               "triton_breaks_hopper_gdn", "build_state_kernels", "build_wy_kernel", "register_fla_gdn_state_op",
               "GDN_STATE_OP", "GDN_SAVE_WV", "GDN_STATE_CHAIN", "GDN_CHAIN_SEGMENT", "GDN_WY_BWD", "GDN_DQKWG", "build_dqkwg_kernel",
               "GDN_FWD_O", "build_fwd_o_kernel", "launch_chunk_kernel", "OUR_KERNELS",
               "CHAIN_SEGMENT_AUTO", "state_chain_choice",
               "fla_signature_problem", "widen_recurrence_tiles", "fla_recurrence_programs", "import_fla"}


def top_level(path):
    """name -> source of each top-level def/class/assignment; plus the list of imports and other statements."""
    src = path.read_text(encoding="utf-8")
    tree = ast.parse(src)
    named, imports, other = {}, [], []
    for node in tree.body:
        seg = ast.get_source_segment(src, node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            decorators = "".join(ast.get_source_segment(src, d) + "\n" for d in node.decorator_list)
            assert node.name not in named, f"{path.name}: {node.name} defined twice"
            named[node.name] = decorators + seg
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        assert n.id not in named, f"{path.name}: {n.id} assigned twice"
                        named[n.id] = seg
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append(seg)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node is tree.body[0]:
            continue  # module docstring
        else:
            other.append(seg)
    return named, imports, other


BASE_SRC = top_level(REPO / "train_gpt.py")
HYB_SRC = top_level(REPO / "train_gpt_gdn.py")


def test_names():
    base, hyb = set(BASE_SRC[0]), set(HYB_SRC[0])
    assert base - hyb == set(), "the baseline has names the hybrid lacks"
    assert hyb - base == GDN_SECTION


@pytest.mark.parametrize("name", sorted(set(BASE_SRC[0]) & set(HYB_SRC[0]) - ALLOWED_DIFFERENT))
def test_shared_definition_identical(name):
    assert BASE_SRC[0][name] == HYB_SRC[0][name]


def test_imports_and_main_guard():
    assert [i for i in HYB_SRC[1] if i not in BASE_SRC[1]] == ["import inspect", "import re"]
    assert [i for i in BASE_SRC[1] if i not in HYB_SRC[1]] == []
    assert BASE_SRC[2] == HYB_SRC[2]  # the `if __name__ == "__main__":` block and any other statement


def test_order_of_shared_definitions():
    shared = set(BASE_SRC[0]) & set(HYB_SRC[0])
    assert [n for n in BASE_SRC[0] if n in shared] == [n for n in HYB_SRC[0] if n in shared]


def test_script_defaults():
    b, h = load_script("train_gpt").SCRIPT_DEFAULTS, load_script("train_gpt_gdn").SCRIPT_DEFAULTS
    assert set(h) - set(b) == {"GDN_LAYERS", "MLP_RECOMPUTE"} and set(b) <= set(h)
    assert b["MODEL_KIND"] == "baseline" and h["MODEL_KIND"] == "hybrid"


# ------------------------------------------------------------------------------------------------
# Behaviour: the same inputs give the same outputs through either module
# ------------------------------------------------------------------------------------------------

B, H = load_script("train_gpt"), load_script("train_gpt_gdn")


def test_same_newton_schulz():
    G = torch.randn(40, 24)
    assert torch.equal(B.zeropower_via_newtonschulz5(G), H.zeropower_via_newtonschulz5(G))


def test_same_quantisation():
    torch.manual_seed(0)
    state = {"a.weight": torch.randn(300, 300), "blocks.0.attn_scale": torch.rand(8), "b": torch.randn(5, 5)}
    ob, sb = B.quantize_state_dict_int8(state)
    oh, sh = H.quantize_state_dict_int8(state)
    assert sb == sh
    db, dh = B.dequantize_state_dict_int8(ob), H.dequantize_state_dict_int8(oh)
    assert all(torch.equal(db[k], dh[k]) for k in state)
    assert ob["format"] == oh["format"] and ob["dtypes"] == oh["dtypes"]
    for part in ("quantized", "scales", "passthrough"):
        assert set(ob[part]) == set(oh[part])
        assert all(torch.equal(ob[part][k], oh[part][k]) for k in ob[part])


@needs_tokenizer
def test_same_byte_luts():
    sb, sh = B.load_tokenizer(str(TOKENIZER), 1024), H.load_tokenizer(str(TOKENIZER), 1024)
    for tb, th in zip(B.build_byte_luts(sb, 1024), H.build_byte_luts(sh, 1024)):
        assert torch.equal(tb, th)


def test_same_lr_multiplier(clean_env):
    for k, v in dict(ITERATIONS="50", WARMDOWN_ITERS="20").items():
        clean_env.setenv(k, v)
    ab, ah = B.Hyperparameters(), H.Hyperparameters()
    for step in range(0, 51, 3):
        assert B.lr_multiplier(ab, step, 10.0 * step, None) == H.lr_multiplier(ah, step, 10.0 * step, None)
        assert B.lr_multiplier(ab, step, 10.0 * step, 600.0) == H.lr_multiplier(ah, step, 10.0 * step, 600.0)


def test_same_loader(tmp_path):
    files = [str(write_shard(tmp_path / f"d_train_{i:06d}.bin", np.arange(i * 1000, i * 1000 + 700)))
             for i in range(3)]
    lb = B.DistributedTokenLoader(files, 1, 2, torch.device("cpu"))
    lh = H.DistributedTokenLoader(files, 1, 2, torch.device("cpu"))
    for _ in range(12):
        (xb, yb), (xh, yh) = lb.next_batch(512, 16, 4), lh.next_batch(512, 16, 4)
        assert torch.equal(xb, xh) and torch.equal(yb, yh)


def test_same_attention_model_without_gdn_layers(clean_env):
    """The hybrid with GDN_LAYERS empty is the baseline: same parameters from the same seed, same loss,
    same gradients, same optimiser split."""
    for k, v in dict(MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", NUM_LAYERS="3", GDN_LAYERS="").items():
        clean_env.setenv(k, v)
    models = []
    for mod in (B, H):
        args = mod.Hyperparameters()
        mod.prepare_mixers(args, torch.device("cpu"))
        torch.manual_seed(11)
        models.append((mod, args, mod.GPT(args)))
    (_, _, mb), (_, _, mh) = models
    sdb, sdh = mb.state_dict(), mh.state_dict()
    assert list(sdb) == list(sdh) and all(torch.equal(sdb[k], sdh[k]) for k in sdb)
    torch.manual_seed(12)
    with torch.no_grad():
        noise = {k: torch.randn_like(v) * 0.1 for k, v in sdb.items()}
        for m in (mb, mh):
            for k, p in m.named_parameters():
                p.add_(noise[k])
    ids = torch.randint(0, 1024, (2, 48))
    lb, lh = mb(ids, ids.roll(-1, 1)), mh(ids, ids.roll(-1, 1))
    assert torch.equal(lb, lh)
    lb.backward()
    lh.backward()
    for (nb, pb), (nh, ph) in zip(mb.named_parameters(), mh.named_parameters()):
        assert nb == nh and torch.equal(pb.grad, ph.grad), nb
    gb = {k: [n for n, _ in v] for k, v in B.split_params(mb).items()}
    gh = {k: [n for n, _ in v] for k, v in H.split_params(mh).items()}
    assert gb == gh
