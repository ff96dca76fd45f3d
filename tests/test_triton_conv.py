"""The hybrid's own Triton kernels against PyTorch forms: the conv + SiLU kernels (train_gpt_gdn.build_conv_kernels,
run as the custom op gdn_repro::conv_silu_fwd/bwd) and the v_new = u - w h kernel of GDN_SAVE_STATE=1
(build_state_kernels' v_new), on the CPU under Triton's interpreter (TRITON_INTERPRET=1;
triton from run_tests.sh's TRITON_INTERP_DIR or the installed one; in a subprocess, so that the other tests never
import triton): the real kernels' outputs and gradients on fresh random inputs, a strided q|k|v-style view, lengths
that are not a multiple of the tiles, eager and under torch.compile. On a GPU: tools/check_gdn_fla.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, load_script

TRITON_DIR = Path(os.environ.get("TRITON_INTERP_DIR", REPO / ".cache" / "triton-interp"))

CHECK = textwrap.dedent("""
    import importlib.util, sys, torch
    spec = importlib.util.spec_from_file_location("gdn", sys.argv[1])
    gdn = sys.modules["gdn"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(gdn)
    assert gdn.register_conv_op() is None and gdn.CONV_OP is not None
    torch.manual_seed(int(sys.argv[2]))
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        for B, T, C, K in ((2, 37, 24, 4), (1, 70, 130, 4), (3, 5, 8, 3)):
            wide = torch.randn(B, T, C + 10, dtype=dtype)  # the op sees a strided view, as of q|k|v
            w = torch.randn(C, K)
            dy = torch.randn(B, T, C, dtype=dtype)
            results = {}
            for name, fn in (("torch", lambda x, w: gdn.conv1d_silu(x[..., :C], w, "torch")),
                             ("op", lambda x, w: gdn.conv1d_silu(x[..., :C], w, "fla")),
                             ("op compiled", torch.compile(lambda x, w: gdn.conv1d_silu(x[..., :C], w, "fla"),
                                                           dynamic=False))):
                torch._dynamo.reset()
                x_leaf, w_leaf = wide.clone().requires_grad_(True), w.clone().requires_grad_(True)
                y = fn(x_leaf, w_leaf)
                y.backward(dy)
                results[name] = (y.detach().float(), x_leaf.grad.float(), w_leaf.grad.float())
            for name in ("op", "op compiled"):
                for what, got, ref in zip(("y", "dx", "dw"), results[name], results["torch"]):
                    err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
                    assert err < tol, (name, what, dtype, B, T, C, K, err)
            assert results["op"][1][..., C:].abs().max() == 0  # no gradient outside the view
            # The ops take any layout (flexible_layout: inductor passes its padded slices as they are): strided x and
            # dy give the contiguous inputs' results exactly
            wc, dy_wide = w.to(dtype), torch.randn(B, T, C + 6, dtype=dtype)
            x_s, dy_s = wide[..., 5:5 + C], dy_wide[..., 3:3 + C]
            x_c, dy_c = x_s.contiguous(), dy_s.contiguous()
            ops = torch.ops.gdn_repro
            assert torch.equal(ops.conv_silu_fwd(x_s, wc), ops.conv_silu_fwd(x_c, wc))
            for a, b in zip(ops.conv_silu_bwd(x_s, wc, dy_s), ops.conv_silu_bwd(x_c, wc, dy_c)):
                assert torch.equal(a, b)
    for op in (torch.ops.gdn_repro.conv_silu_fwd.default, torch.ops.gdn_repro.conv_silu_bwd.default):
        assert torch.Tag.flexible_layout in op.tags, op.tags
    print("ok")
""")


V_NEW_CHECK = textwrap.dedent("""
    import importlib.util, sys, torch
    spec = importlib.util.spec_from_file_location("gdn", sys.argv[1])
    gdn = sys.modules["gdn"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(gdn)
    v_new = gdn.build_state_kernels()["v_new"]
    torch.manual_seed(int(sys.argv[2]))
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        for B, T, H, K, V in ((2, 100, 3, 42, 84), (1, 64, 2, 16, 16), (1, 130, 1, 20, 100)):
            NT = -(-T // 64)
            w, u = torch.randn(B, T, H, K, dtype=dtype), torch.randn(B, T, H, V, dtype=dtype)
            h = torch.randn(B, NT, H, K, V, dtype=dtype)
            wp = torch.nn.functional.pad(w.float(), (0, 0, 0, 0, 0, NT * 64 - T)).view(B, NT, 64, H, K)
            wh = torch.einsum("bnchk,bnhkv->bnchv", wp, h.float()).reshape(B, NT * 64, H, V)[:, :T]
            ref = u.float() - wh
            got = v_new(u, w, h)
            assert got.dtype == dtype and got.shape == u.shape
            err = ((got.float() - ref).abs().max() / ref.abs().max()).item()
            assert err < tol, (dtype, B, T, H, K, V, err)
    print("ok")
""")


def run_with_triton(check: str, *args: str, interpret: bool = True) -> subprocess.CompletedProcess:
    """check (a Python source) in a subprocess that imports triton from TRITON_DIR (or the installed one), under
    the interpreter or not, with the script's path, args and the repository root as sys.argv[1:]."""
    if not (TRITON_DIR / "triton").is_dir() and importlib.util.find_spec("triton") is None:
        pytest.fail(f"triton not found in {TRITON_DIR} nor installed: run_tests.sh installs it there (or set "
                    "TRITON_INTERP_DIR)")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(TRITON_DIR)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-c", check, str(REPO / "train_gpt_gdn.py"), *args, str(REPO)],
                          env=env, capture_output=True, text=True, timeout=900)


def run_interpreted(check: str, seed: int) -> subprocess.CompletedProcess:
    return run_with_triton(check, str(seed))


def test_v_new_kernel_matches_pytorch_form():
    """u - w h per 64-row chunk (the states h of each chunk's start): lengths not a multiple of the chunk, head
    dims not powers of two, several value blocks."""
    r = run_interpreted(V_NEW_CHECK, 0)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]


def test_triton_conv_kernels_match_pytorch_form():
    for seed in (0, 1):
        r = run_interpreted(CHECK, seed)
        assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]


def test_conv_op_refused_without_triton(monkeypatch):
    """No Triton: the registration says why and leaves the op unset (then the PyTorch form runs)."""
    gdn = load_script("train_gpt_gdn")
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    monkeypatch.setattr(gdn, "CONV_OP", None)
    why = gdn.register_conv_op()
    assert why is not None and "triton" in why and gdn.CONV_OP is None


def test_fla_gdn_op_refused_without_fla_core(monkeypatch):
    """No fla-core: the GDN op's registration says why (the import error) and leaves the op unset."""
    gdn = load_script("train_gpt_gdn")
    monkeypatch.setitem(sys.modules, "fla", None)
    monkeypatch.setattr(gdn, "GDN_OP", None)
    assert gdn.register_fla_gdn_op().startswith("ModuleNotFoundError")
    assert gdn.GDN_OP is None
