"""The gated delta rule's chunk output (GDN_FWD_O, v30): train_gpt_gdn's build_fwd_o_kernel, here for
the checks and the benchmark, with a float64 reference and the kernel it replaces (FLA's chunk_fwd_o).

    fwd_o(q, k, v_new, h, g, scale) -> o      fla_path(...) -> the same from FLA's kernel
    reference(...) -> the same in float64     inputs(B, T, H, K, V, ...) -> random inputs in FLA's layouts
    kernels: {"fwd_o"}  (the Triton kernel, for the sm_90 compile test)

g is the chunk-local cumulative decay in log2 units (the state op's g_cum); h[:, c] is the state entering chunk c.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tools.gpu.cuda_model import load_script_file
from tools.kernels.dqkwg import inputs as dqkwg_inputs
from tools.kernels.wy_bwd import CHUNK

script = load_script_file(Path(__file__).resolve().parents[2] / "train_gpt_gdn.py", "train_gpt_gdn_fwd_o_kernel")
_built = script.build_fwd_o_kernel()
fwd_o, kernels = _built["fwd_o"], _built["kernels"]


def reference(q, k, v_new, h, g, scale, chunk: int = CHUNK):
    """o in float64, chunk by chunk: scale 2^g (q h) + (causal(q k^T) 2^(g_i - g_j) scale) v_new."""
    q, k, v_new, h, g = (x.detach().double() for x in (q, k, v_new, h, g))
    o = torch.empty_like(v_new)
    for c, s in enumerate(range(0, k.size(1), chunk)):
        e = min(s + chunk, k.size(1))
        qc, kc, vc, gc = (x[:, s:e].transpose(1, 2) for x in (q, k, v_new, g))  # (B, H, n, .)
        P = torch.tril((qc @ kc.transpose(-1, -2)) * torch.exp2(gc[..., :, None] - gc[..., None, :])) * scale
        o[:, s:e] = (scale * torch.exp2(gc)[..., None] * (qc @ h[:, c]) + P @ vc).transpose(1, 2)
    return o


def fla_path(q, k, v_new, h, g, scale):
    """FLA's chunk_fwd_o as the state op calls it without GDN_FWD_O."""
    from fla.ops.common.chunk_o import chunk_fwd_o
    return chunk_fwd_o(q=q, k=k, v=v_new, h=h, g=g, scale=scale, chunk_size=CHUNK)


def inputs(B, T, H, K, V, decay=0.5, dtype=torch.float32, device="cpu", seed=0):
    """q, k (l2-normalised), v_new, states h (k's dtype), g_cum (log2, chunk-local), scale K^-0.5: dqkwg's inputs
    less the gradients."""
    x = dqkwg_inputs(B, T, H, K, V, decay, dtype, device, seed)
    return {n: x[n] for n in ("q", "k", "v_new", "h", "g", "scale")}
