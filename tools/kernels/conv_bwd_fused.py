"""Candidate: the hybrid's conv + SiLU backward as one Triton kernel. train_gpt_gdn.build_conv_kernels (v11) writes
dz = dy silu'(z) to memory in one kernel and sums K shifted rows of it into dx in a second; here each program walks
its TSEG rows backwards in time, keeps the dz of the tile it did before (the next rows in time) in registers, and
forms dx from the current and that tile with tl.gather, so dz never goes through memory. The weight gradient is
accumulated as in v11 (partial sums per program, summed in a fixed order). Same numbers as v11: dz rounded to x's
dtype before it enters dx, fp32 sums. Each program also recomputes the first tile of the next segment (its first
K-1 rows feed this segment's last dx rows): 1/(TSEG/BT) more z work.

    bwd = build()   # bwd(x, weight, dy) -> (dx, dweight), as build_conv_kernels' bwd
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def dz_tile(x, wt, dy, i_b, t0, T, d, j, md, sxb, sxt, sdb, sdt, K: tl.constexpr, BT: tl.constexpr):
    """dz = dy silu'(z) of rows t0 .. t0+BT-1 (fp32; 0 past T) and the (BT, KP, BD) tile of shifted x rows."""
    t = t0 + tl.arange(0, BT)
    s = t[:, None] - (K - 1) + j[None, :]
    m = ((s >= 0) & (t[:, None] < T) & (j < K)[None, :])[:, :, None] & md[None, None, :]
    xs = tl.load(x + i_b * sxb + s[:, :, None] * sxt + d[None, None, :], mask=m, other=0.0).to(tl.float32)
    z = tl.sum(xs * wt[None, :, :], axis=1)
    mt = (t < T)[:, None] & md[None, :]
    g = tl.load(dy + i_b * sdb + t[:, None] * sdt + d[None, :], mask=mt, other=0.0).to(tl.float32)
    sg = tl.sigmoid(z)
    return g * sg * (1.0 + z * (1.0 - sg)), xs


@triton.jit
def conv_silu_bwd_fused_kernel(x, w, dy, dx, dw, T, D, sxb, sxt, sdb, sdt, K: tl.constexpr, KP: tl.constexpr,
                               TSEG: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    i_d, i_s, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    d = i_d * BD + tl.arange(0, BD)
    j = tl.arange(0, KP)
    r = tl.arange(0, BT)
    md = d < D
    mk = (j < K)[:, None] & md[None, :]
    wt = tl.load(w + d[None, :] * K + j[:, None], mask=mk, other=0.0).to(tl.float32)  # (KP, BD)
    acc = tl.zeros([BT, KP, BD], dtype=tl.float32)
    nxt, _ = dz_tile(x, wt, dy, i_b, i_s * TSEG + TSEG, T, d, j, md, sxb, sxt, sdb, sdt, K, BT)
    nxt = nxt.to(dx.dtype.element_ty).to(tl.float32)
    for step in range(TSEG // BT):  # tiles from the segment's end back to its start
        t0 = i_s * TSEG + (TSEG // BT - 1 - step) * BT
        dzt, xs = dz_tile(x, wt, dy, i_b, t0, T, d, j, md, sxb, sxt, sdb, sdt, K, BT)
        acc += dzt[:, None, :] * xs
        cur = dzt.to(dx.dtype.element_ty).to(tl.float32)  # dz as v11 stores it
        both = tl.reshape(tl.permute(tl.join(cur, nxt), (2, 0, 1)), (2 * BT, BD))  # rows t0 .. t0+2BT-1
        out = cur * tl.load(w + d * K + (K - 1), mask=md, other=0.0).to(tl.float32)[None, :]
        for i in tl.static_range(1, K):  # dx_t = sum_i w_{K-1-i} dz_{t+i}
            sh = tl.gather(both, (r[:, None] + i) + tl.zeros([BT, BD], dtype=tl.int32), 0)
            out += sh * tl.load(w + d * K + (K - 1 - i), mask=md, other=0.0).to(tl.float32)[None, :]
        t = t0 + r
        tl.store(dx + i_b * T * D + t[:, None] * D + d[None, :], out.to(dx.dtype.element_ty),
                 mask=(t < T)[:, None] & md[None, :])
        nxt = cur
    part = dw + (i_b * tl.num_programs(1) + i_s) * D * K
    tl.store(part + d[None, :] * K + j[:, None], tl.sum(acc, axis=0), mask=mk)


def build():
    """bwd(x, weight, dy) -> (dx, dweight), as train_gpt_gdn.build_conv_kernels' backward (x and dy may be views
    whose last dim is contiguous)."""
    kernel = conv_silu_bwd_fused_kernel
    tuned = os.environ.get("TRITON_INTERPRET") != "1"
    TSEG = 512 if tuned else 32
    if tuned:
        configs = [triton.Config({"BT": bt, "BD": bd}, num_warps=nw) for bt in (16, 32) for bd in (32, 64, 128)
                   for nw in (4, 8)]
        kernel = triton.autotune(configs, key=["D", "K"])(conv_silu_bwd_fused_kernel)
    tile = {} if tuned else {"BT": 16, "BD": 64}

    def bwd(x: Tensor, weight: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
        x = x if x.stride(-1) == 1 else x.contiguous()
        dy = dy if dy.stride(-1) == 1 else dy.contiguous()
        (B, T, D), K = x.shape, weight.size(1)
        weight = weight.contiguous()
        dx = x.new_empty(B, T, D)
        parts = torch.empty(B * triton.cdiv(T, TSEG), D, K, device=x.device, dtype=torch.float32)
        kernel[lambda meta: (triton.cdiv(D, meta["BD"]), triton.cdiv(T, TSEG), B)](
            x, weight, dy, dx, parts, T, D, x.stride(0), x.stride(1), dy.stride(0), dy.stride(1), K=K,
            KP=triton.next_power_of_2(K), TSEG=TSEG, **tile)
        return dx, parts.sum(0).to(weight.dtype)

    return bwd
