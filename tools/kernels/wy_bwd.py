"""The backward of the gated delta rule's WY representation (GDN_WY_BWD=1, v28 candidate): train_gpt_gdn's
build_wy_kernel, here for the checks and the benchmark, with a float64 reference by autograd through the forward
and the path it replaces (FLA's prepare_wy_repr_bwd, then the state op's two adds and reverse chunk-local cumsum).

    wy_bwd(k, v, beta, g, A, dw, du, dk_in, dg_in) -> (dk, dv, dbeta, dg)
    fla_path(...)  -> the same from FLA's kernels          reference(...) -> the same in float64
    inputs(B, T, H, K, V, ...) -> random inputs in FLA's layouts, A from the float64 forward
    kernels: {"wy_bwd"}  (the Triton kernel, for the sm_90 compile test)

g is the chunk-local cumulative decay in log2 units (the state op's g_cum); dg is w.r.t. the decay in natural-log
units after the reverse chunk-local cumsum, which is what the state op returns for g.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tools.gpu.cuda_model import load_script_file

CHUNK = 64
script = load_script_file(Path(__file__).resolve().parents[2] / "train_gpt_gdn.py", "train_gpt_gdn_wy_kernel")
_built = script.build_wy_kernel()
wy_bwd, kernels = _built["wy_bwd"], _built["kernels"]


def chunk_cumsum(x: torch.Tensor, reverse: bool = False, chunk: int = CHUNK) -> torch.Tensor:
    """Cumulative sum along dim 1 (time) within each chunk of `chunk` rows; reverse: from each row to its chunk's
    end."""
    out = torch.empty_like(x)
    for s in range(0, x.size(1), chunk):
        part = x[:, s:s + chunk]
        out[:, s:s + chunk] = part.flip(1).cumsum(1).flip(1) if reverse else part.cumsum(1)
    return out


def wy_forward(k, v, beta, g, chunk: int = CHUNK):
    """(w, u, A) per chunk: L = strictly lower part of beta_i (k_i . k_j) 2^(g_i - g_j), A = (I + L)^-1,
    w = A (beta 2^g k), u = A (beta v); differentiable (float64 autograd)."""
    B, T, H, K = k.shape
    ws, us, As = [], [], []
    for s in range(0, T, chunk):
        kc, vc, bc, gc = k[:, s:s + chunk], v[:, s:s + chunk], beta[:, s:s + chunk], g[:, s:s + chunk]
        n = kc.size(1)
        kt, vt, bt, gt = (x.transpose(1, 2) for x in (kc, vc, bc, gc))  # (B, H, n, .)
        L = bt[..., None] * (kt @ kt.transpose(-1, -2)) * torch.exp2(gt[..., :, None] - gt[..., None, :])
        L = torch.tril(L, diagonal=-1)
        A = torch.linalg.inv(torch.eye(n, dtype=k.dtype) + L)
        ws.append((A @ (kt * (bt * torch.exp2(gt))[..., None])).transpose(1, 2))
        us.append((A @ (vt * bt[..., None])).transpose(1, 2))
        As.append(torch.nn.functional.pad(A, (0, chunk - n)).transpose(1, 2))  # (B, n, H, chunk), as FLA stores it
    return torch.cat(ws, 1), torch.cat(us, 1), torch.cat(As, 1)


def reference(k, v, beta, g, dw, du, dk_in, dg_in, chunk: int = CHUNK):
    """(dk, dv, dbeta, dg) in float64 by autograd through wy_forward, plus dk_in, and dg_in + the decay's gradient
    (natural-log units) summed from each row to its chunk's end."""
    leaves = [x.detach().double().requires_grad_(True) for x in (k, v, beta, g)]
    w, u, _ = wy_forward(*leaves, chunk=chunk)
    dk, dv, db, dg2 = torch.autograd.grad((w * dw.double()).sum() + (u * du.double()).sum(), leaves)
    dg = chunk_cumsum(dg_in.double() + dg2 / math.log(2), reverse=True, chunk=chunk)
    return dk + dk_in.double(), dv, db, dg


def fla_path(k, v, beta, g, A, dw, du, dk_in, dg_in, inplace: bool = False):
    """What the state op runs without GDN_WY_BWD: FLA's prepare_wy_repr_bwd, the two adds, the reverse cumsum.
    inplace: add into dk_in and dg_in themselves, as the state op does (for timing; the inputs then drift)."""
    from fla.ops.gated_delta_rule.wy_fast import prepare_wy_repr_bwd
    from fla.ops.utils import chunk_local_cumsum
    dk2, dv, db, dg2 = prepare_wy_repr_bwd(k=k, v=v, beta=beta, g=g, A=A, dw=dw, du=du)
    dk = dk_in if inplace else dk_in.clone()
    dk.add_(dk2)
    dg = dg_in if inplace else dg_in.clone()
    dg.add_(dg2)
    return dk, dv, db, chunk_local_cumsum(dg, chunk_size=CHUNK, reverse=True)


def inputs(B, T, H, K, V, decay=0.5, dtype=torch.float32, device="cpu", seed=0):
    """k (l2-normalised, as the layer feeds it), v, beta in (0, 1), g_cum (log2 units, chunk-local), A from the
    float64 forward (k's dtype, as FLA stores it), dw, du, dk_in (k's dtype, as FLA's dqkwg returns it), dg_in fp32."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    beta = torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    g = chunk_cumsum(-torch.rand(B, T, H, generator=gen, dtype=torch.float64) * decay) / math.log(2)
    _, _, A = wy_forward(k, v, beta, g)
    dw, dk_in = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    du = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    dg_in = torch.randn(B, T, H, generator=gen, dtype=torch.float64)
    cast = dict(k=k, v=v, beta=beta, A=A, dw=dw, du=du, dk_in=dk_in)
    out = {n: x.to(dtype).to(device).contiguous() for n, x in cast.items()}  # A as FLA stores it: (B, T, H, 64)
    out.update(g=g.float().to(device), dg_in=dg_in.float().to(device))
    return out
