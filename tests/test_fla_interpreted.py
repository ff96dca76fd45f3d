"""The hybrid's two FLA custom ops with fla-core 0.6.0's real Triton kernels, on the CPU under Triton's interpreter
(fla-core and triton from run_tests.sh's TRITON_INTERP_DIR, in a subprocess): FLA's own op (register_fla_gdn_op)
and the state-saving op (GDN_SAVE_STATE, the training default; also traced as one graph; with GDN_SAVE_WV's w and
v_new kept, the same numbers; with our state recurrences of GDN_STATE_CHAIN), outputs and the gradients
of q, k, v, g, beta in fp32, against our chunked PyTorch form; then the whole GDN layer with impl=fla (our conv op
too) against impl=torch, for each op. The stand-in tests in test_gdn.py check the ops' wiring; this one checks that
the wiring matches what FLA's kernels compute. Two interpreter-only adjustments, not in any code that trains:
autotuning takes each kernel's first config (the interpreter has no benchmarker), and a `for` loop's index becomes a
Triton scalar, as compiled Triton makes it, and a one-element tensor converts to an int (FLA's kernels rely on
both). On a GPU: tools/check_gdn_fla.py."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

from conftest import REPO
from test_triton_conv import TRITON_DIR, run_with_triton


def require_fla() -> None:
    """Fail, not skip, where fla-core is missing: run_tests.sh installs it for these tests."""
    if not (TRITON_DIR / "fla").is_dir() and importlib.util.find_spec("fla") is None:
        pytest.fail(f"fla-core not found in {TRITON_DIR} nor installed: run_tests.sh installs it there (or set "
                    "TRITON_INTERP_DIR)")


# Triton interpreter adjustments that FLA's kernels (and ours in tools/kernels/) need: the first autotune config
# only, loop indices as Triton scalars, one-element tensors usable as ints (shared with test_state_chain.py).
INTERP_PATCHES = textwrap.dedent("""
    import ast, importlib.util, sys, torch
    import triton.runtime.autotuner as autotuner
    import triton.runtime.interpreter as interp

    run = autotuner.Autotuner.run
    def first_config(self, *a, **kw):
        self.configs = self.configs[:1]
        return run(self, *a, **kw)
    autotuner.Autotuner.run = first_config

    def visit_For(self, node):  # `for i in ...:` -> the body starts with `i = i`, which the interpreter tensorises
        self.generic_visit(node)
        if isinstance(node.target, ast.Name):
            node.body.insert(0, self.visit_Assign(ast.Assign(targets=[ast.Name(node.target.id, ast.Store())],
                                                             value=ast.Name(node.target.id, ast.Load()))))
        return node
    interp.ASTTransformer.visit_For = visit_For
    patch_tensor = interp._patch_lang_tensor
    def patch_tensor_index(tensor, scope):
        patch_tensor(tensor, scope)
        tensor.__index__ = lambda self: int(self.handle.data.reshape(-1)[0])  # restored with the scope
    interp._patch_lang_tensor = patch_tensor_index

""")

CHECK = INTERP_PATCHES + textwrap.dedent("""
    import fla
    assert fla.__version__ == "0.6.0", fla.__version__
    sys.path.insert(0, sys.argv[-1])
    from tools.checks import rel
    spec = importlib.util.spec_from_file_location("gdn", sys.argv[1])
    gdn = sys.modules["gdn"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(gdn)
    assert gdn.register_fla_gdn_op() is None and gdn.register_fla_gdn_state_op() is None
    torch.manual_seed(0)
    B, T, H, K, V = 1, 256, 2, 16, 32
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1) for _ in range(2))
    v, g, beta = torch.randn(B, T, H, V), -torch.rand(B, T, H) * 0.1, torch.rand(B, T, H) * 2
    do = torch.randn(B, T, H, V)
    scale = K ** -0.5

    def run_op(op):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, g, beta)]
        o = op(*leaves)
        o.backward(do)
        return [o.detach()] + [t.grad for t in leaves]

    ref = run_op(lambda *a: gdn.gated_delta_rule_chunked(*a, scale))
    got = {"fla op": run_op(lambda *a: gdn.GDN_OP(*a, scale)[0])}
    got["state op"] = run_op(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0])
    # one graph (the op's fake shapes must trace), as the whole-model compile runs it
    got["state op, traced"] = run_op(torch.compile(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0], fullgraph=True,
                                                   backend="aot_eager"))
    gdn.GDN_SAVE_WV = True  # w and v_new kept from the forward (GDN_SAVE_WV): the same numbers as recomputed
    got["state op, w/v_new kept"] = run_op(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0])
    got["state op, w/v_new kept, traced"] = run_op(torch.compile(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0],
                                                                 fullgraph=True, backend="aot_eager"))
    gdn.GDN_STATE_CHAIN = "1"  # our state recurrences (GDN_STATE_CHAIN) in the op, with FLA's other kernels
    got["state op, our recurrences"] = run_op(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0])
    got["state op, our recurrences, traced"] = run_op(torch.compile(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0],
                                                                    fullgraph=True, backend="aot_eager"))
    gdn.GDN_STATE_CHAIN = "bwd"  # FLA's forward recurrence, ours backward
    got["state op, our backward recurrence"] = run_op(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0])
    gdn.GDN_CHAIN_SEGMENT = 3  # its chain in segments of 3 chunks (of 4: one of 3, one of 1)
    got["state op, our backward recurrence in segments"] = run_op(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0])
    gdn.GDN_STATE_CHAIN = "1"
    got["state op, our recurrences in segments"] = run_op(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0])
    gdn.GDN_WY_BWD = True  # our WY backward with the adds and the reverse cumsum (GDN_WY_BWD), v27's 32k default
    got["state op, our recurrences in segments, our WY backward"] = run_op(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0])
    got["state op, ..., our WY backward, traced"] = run_op(torch.compile(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0],
                                                                         fullgraph=True, backend="aot_eager"))
    gdn.GDN_DQKWG = gdn.GDN_FWD_O = True  # and our dq/dk/dw/dg and output kernels (GDN_DQKWG, GDN_FWD_O)
    got["state op, ..., our WY backward, dqkwg and output"] = run_op(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0])
    got["state op, ..., our WY backward, dqkwg and output, traced"] = run_op(torch.compile(
        lambda *a: gdn.GDN_STATE_OP(*a, scale)[0], fullgraph=True, backend="aot_eager"))
    gdn.GDN_STATE_CHAIN, gdn.GDN_CHAIN_SEGMENT, gdn.GDN_DQKWG, gdn.GDN_FWD_O = "0", 0, False, False  # FLA's recurrences
    got["state op, our WY backward"] = run_op(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0])
    gdn.GDN_WY_BWD, gdn.GDN_DQKWG = False, True
    got["state op, our dqkwg"] = run_op(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0])
    gdn.GDN_DQKWG, gdn.GDN_FWD_O = False, True
    got["state op, our output kernel"] = run_op(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0])
    gdn.GDN_FWD_O = False
    gdn.GDN_SAVE_WV, gdn.GDN_STATE_CHAIN, gdn.GDN_CHAIN_SEGMENT, gdn.GDN_WY_BWD = False, "0", 0, False
    gdn.GDN_DQKWG = False
    assert all(torch.equal(a, b) for a, b in zip(got["state op, w/v_new kept"], got["state op"]))
    # v21's BV=16 value tiles in FLA's two state recurrences (widen_recurrence_tiles): run alone, the same numbers
    assert gdn.widen_recurrence_tiles() is None
    from fla.ops.common import chunk_delta_h as cdh
    tuners = [cdh.chunk_gated_delta_rule_fwd_kernel_h_blockdim64, cdh.chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64]
    tuners = [t.fn if not hasattr(t, "configs") else t for t in tuners]
    kept = [t.configs for t in tuners]
    for t in tuners:
        t.configs = [c for c in t.configs if c.kwargs["BV"] == 16][:1]
        assert t.configs and t.configs[0].kwargs["BV"] < V  # two programs per head: the grid follows BV
    got["state op, BV=16 recurrences"] = run_op(lambda *a: gdn.GDN_STATE_OP(*a, scale)[0])
    for t, c in zip(tuners, kept):
        t.configs = c
    errs = [rel(a, b) for a, b in zip(got["state op, BV=16 recurrences"], got["state op"])]
    assert max(errs) < 1e-6, errs
    for name, outs in got.items():
        errs = [rel(a, b) for a, b in zip(outs, ref)]
        print(name, " ".join(f"{n}:{e:.1e}" for n, e in zip(("o", "dq", "dk", "dv", "dg", "dbeta"), errs)))
        assert max(errs) < 1e-5, (name, errs)

    # The whole GDN layer (projections, our conv op, gates, norm) with impl=fla against impl=torch, same weights
    import os
    os.environ.update(MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", NUM_LAYERS="2", GDN_LAYERS="0")
    assert gdn.register_conv_op() is None
    args = gdn.Hyperparameters()
    layer_t, layer_f = gdn.GatedDeltaNet(args, impl="torch"), gdn.GatedDeltaNet(args, impl="fla")
    torch.nn.init.normal_(layer_t.o_proj.weight, std=0.1)  # zero-init would hide everything upstream
    layer_f.load_state_dict(layer_t.state_dict())
    x, dy = torch.randn(2, 192, 64), torch.randn(2, 192, 64)

    def run_layer(layer):
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.backward(dy)
        return [y.detach(), xi.grad] + [p.grad for p in layer.parameters()]

    ref = run_layer(layer_t)
    plain, state = gdn.GDN_OP, gdn.GDN_STATE_OP
    for name, op, chain in (("fla op", plain, "0"), ("state op", state, "0"), ("state op, ours", state, "1")):
        gdn.GDN_OP, gdn.GDN_STATE_CHAIN = op, chain
        errs = [rel(a, b) for a, b in zip(run_layer(layer_f), ref)]
        print("layer", name, f"max rel err {max(errs):.1e} over out, dx and {len(errs) - 2} weight gradients")
        assert max(errs) < 1e-4, (name, errs)  # fp32, two algorithms; the decay parameters' grads sum most
    print("ok")
""")


def test_fla_ops_with_fla_kernels_match_our_form():
    require_fla()
    r = run_with_triton(CHECK)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-4000:]


IMPORT_CHECK = textwrap.dedent("""
    import importlib.util, os, sys
    preset = os.environ.get("FLA_CACHE_RESULTS")
    spec = importlib.util.spec_from_file_location("gdn", sys.argv[1])
    gdn = sys.modules["gdn"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(gdn)
    assert "fla" not in sys.modules  # the script imports fla only in import_fla
    fla, note = gdn.import_fla()
    import fla.utils
    from fla.ops.common import chunk_delta_h  # a recurrence the step runs: decorated with these kwargs
    print(preset, os.environ["FLA_CACHE_RESULTS"], fla.utils.autotune_cache_kwargs, note)
""")


@pytest.mark.parametrize("preset", [None, "1"])
def test_import_fla_tunes_at_the_runs_shapes_unless_asked(monkeypatch, preset):
    """fla-core keeps autotune picks on disk under keys without the sequence length or batch: the script turns that
    off before importing fla (each run tunes at its own shapes) and logs it; a user's FLA_CACHE_RESULTS=1 stays."""
    require_fla()
    if preset is None:
        monkeypatch.delenv("FLA_CACHE_RESULTS", raising=False)
    else:
        monkeypatch.setenv("FLA_CACHE_RESULTS", preset)
    r = run_with_triton(IMPORT_CHECK)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = r.stdout.strip().splitlines()[-1]
    if preset is None:
        assert out.startswith("None 0 {'cache_results': False} FLA autotuned at this run's shapes"), out
    else:
        assert out.startswith("1 1 {'cache_results': True} FLA autotune picks from Triton's disk cache"), out
