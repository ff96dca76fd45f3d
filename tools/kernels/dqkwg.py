"""The gated delta rule's chunk backward for q, k, w and g (GDN_DQKWG=1, v29 candidate): train_gpt_gdn's
build_dqkwg_kernel, here for the checks and the benchmark, with a float64 reference by autograd through one
chunk's output and the state it passes on, and the kernel it replaces (FLA's chunk_bwd_dqkwg).

    dqkwg(q, k, v_new, g, h, do, dh, dv, scale) -> (dq, dk, dw, dg)
    fla_path(...)  -> the same from FLA's kernel (its Triton kernel; on Hopper with Triton 3.4-3.7.0 FLA refuses it)
    reference(...) -> the same in float64            inputs(B, T, H, K, V, ...) -> random inputs in FLA's layouts
    kernels: {"dqkwg"}  (the Triton kernel, for the sm_90 compile test)

g is the chunk-local cumulative decay in log2 units (the state op's g_cum); dg is w.r.t. the decay in natural-log
units per row, before the reverse chunk-local cumsum (which the WY backward's tail does). h[:, c] is the state
entering chunk c, dh[:, c] the gradient at the state leaving it (FLA's bwd_dhu), dv the gradient at v_new.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tools.gpu.cuda_model import load_script_file
from tools.kernels.wy_bwd import CHUNK, chunk_cumsum

script = load_script_file(Path(__file__).resolve().parents[2] / "train_gpt_gdn.py", "train_gpt_gdn_dqkwg_kernel")
_built = script.build_dqkwg_kernel()
dqkwg, kernels = _built["dqkwg"], _built["kernels"]


def reference(q, k, v_new, g, h, do, dh, dv, scale, chunk: int = CHUNK):
    """(dq, dk, dw, dg) in float64: autograd of sum(o do) + sum(h' dh) per chunk through
    o = scale (2^g q h + causal(q k^T 2^(g_i - g_j)) v_new) and h' = 2^g_last h + (2^(g_last - g) k)^T v_new, with
    v_new and h held; dw = -(dv h^T); dg divided by ln 2 (natural-log units)."""
    d = lambda x: x.detach().double()  # noqa: E731
    q, k, v_new, g, h, do, dh, dv = map(d, (q, k, v_new, g, h, do, dh, dv))
    B, T, H, K = k.shape
    out = [torch.zeros_like(x) for x in (q, k, k, g)]
    for c, s in enumerate(range(0, T, chunk)):
        e = min(s + chunk, T)
        qc, kc, gc = (x[:, s:e].transpose(1, 2).clone().requires_grad_(True) for x in (q, k, g))  # (B, H, n, .)
        vc, doc, dvc = (x[:, s:e].transpose(1, 2) for x in (v_new, do, dv))
        hc, dhc = h[:, c], dh[:, c]  # (B, H, K, V)
        decay = torch.exp2(gc[..., :, None] - gc[..., None, :])
        n = e - s
        causal = torch.tril(torch.ones(n, n, dtype=torch.float64))
        o = scale * (torch.exp2(gc)[..., None] * (qc @ hc) + ((qc @ kc.transpose(-1, -2)) * decay * causal) @ vc)
        g_last = gc[..., -1:]
        h_next = torch.exp2(g_last)[..., None] * hc + (kc * torch.exp2(g_last - gc)[..., None]).transpose(-1, -2) @ vc
        dq, dk, dg = torch.autograd.grad((o * doc).sum() + (h_next * dhc).sum(), (qc, kc, gc))
        out[0][:, s:e] = dq.transpose(1, 2)
        out[1][:, s:e] = dk.transpose(1, 2)
        out[2][:, s:e] = -(dvc @ hc.transpose(-1, -2)).transpose(1, 2)
        out[3][:, s:e] = dg.transpose(1, 2) / math.log(2)
    return tuple(out)


def fla_path(q, k, v_new, g, h, do, dh, dv, scale):
    """FLA's chunk_bwd_dqkwg as the state op calls it without GDN_DQKWG (w only sets dw's dtype and shape)."""
    from fla.ops.common.chunk_o import chunk_bwd_dqkwg
    return chunk_bwd_dqkwg(q=q, k=k, v=v_new, w=torch.empty_like(k), g=g, h=h, dv=dv, do=do, dh=dh, scale=scale,
                           chunk_size=CHUNK)


def inputs(B, T, H, K, V, decay=0.5, dtype=torch.float32, device="cpu", seed=0):
    """q, k (l2-normalised, as the layer feeds them), v_new, do, dv, states h and their gradients dh (one per chunk;
    h in k's dtype as FLA's forward keeps it, dh fp32), g_cum (log2 units, chunk-local), scale K^-0.5."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    q, k = (torch.nn.functional.normalize(r(B, T, H, K), dim=-1) for _ in range(2))
    NT = -(-T // CHUNK)
    out = dict(q=q, k=k, v_new=r(B, T, H, V), do=r(B, T, H, V), dv=r(B, T, H, V), h=r(B, NT, H, K, V))
    out = {n: x.to(dtype).to(device).contiguous() for n, x in out.items()}
    g = chunk_cumsum(-torch.rand(B, T, H, generator=gen, dtype=torch.float64) * decay) / math.log(2)
    out.update(g=g.float().to(device), dh=r(B, NT, H, K, V).float().to(device), scale=K ** -0.5)
    return out
