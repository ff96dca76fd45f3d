"""Candidate kernels (not used by training yet): the gated delta rule's two state recurrences, FLA's
chunk_gated_delta_rule_fwd_h and chunk_gated_delta_rule_bwd_dhu, as a chunk-parallel part plus a chain of one
matrix product per chunk.

Why: at the 32k preset each of FLA's recurrences is one program per (sequence, head, value tile) walking 512
dependent chunk steps, and a step costs 1.2 us forward / 2.3 us backward on an H200 (PERF_NOTES, v21 section):
8-11x the kernels' byte floors. A step of FLA's forward chains two products (v_new = u - w h, then
h <- 2^g_last h + k~^T v_new); its backward three. Both are affine in the state, so with per-chunk matrices
that do not depend on it the chain needs one (K x K) @ (K x BV) product a step:

    forward   h_{c+1} = A_c h_c + B_c,      A_c = 2^g_last I - k~^T w,   B_c = k~^T u,    k~ = k * 2^(g_last - g)
    backward  D_{c-1} = A_c^T D_c + R_c,    R_c = (q * 2^g)^T do * scale - w^T dv

(D_c: the gradient of the state after chunk c, which FLA stores as dh[c]; g: FLA's chunk-local cumulative log2
decay). A_c, B_c and R_c come from one chunk-parallel kernel; the chain stores the state at each chunk as FLA does;
a chunk-parallel epilogue forms v_new = u - w h_c (forward) or dv2 = dv + 2^(g_last - g) * (k D_c) (backward)
with bf16 operands, as FLA's kernels do. Inputs and outputs are FLA's (B, T, H, .) layouts and dtypes.
Prediction (to measure with tools/gpu/bench_state_chain.py): a chain step of one product, ~2x shorter forward and
~3x backward; with the extra passes, fwd_h 617 -> ~430 us and bwd_dhu 1165 -> ~430 us per 32k call, ~-50 ms per
32k step. The chain's product runs in tf32 (fp32 states; FLA rounds the state to bf16 for its products).
The forward epilogue computes what train_gpt_gdn.py's v_new kernel does (GDN_SAVE_WV=0); wiring these kernels into
the script's state op would make that kernel this epilogue (the script stays self-contained).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _prep_kernel(k, w, x, do, dv, g, A, Bm, scale, T, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                 BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BACKWARD: tl.constexpr, IEEE: tl.constexpr):
    """One program per (chunk, sequence x head): A_c (K x K, fp32) and, forward, B_c = k~^T u (x = u; do, dv
    unused) or, backward, R_c = (q 2^g)^T do scale - w^T dv (x = q), fp32 (K x V)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    t = i_t * BT + tl.arange(0, BT)
    kk = tl.arange(0, BK)
    vv = tl.arange(0, BV)
    mt, mk, mv = t < T, kk < K, vv < V
    rows = (i_b * T + t) * H + i_h
    last = tl.minimum(i_t * BT + BT, T) - 1
    g_last = tl.load(g + (i_b * T + last) * H + i_h)
    b_g = tl.load(g + rows, mask=mt, other=0.0)
    e = tl.where(mt, tl.exp2(g_last - b_g), 0.0)
    b_k = tl.load(k + rows[:, None] * K + kk[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
    b_w = tl.load(w + rows[:, None] * K + kk[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
    b_ke = (b_k.to(tl.float32) * e[:, None]).to(b_k.dtype)  # k~, rounded as FLA rounds its gated v_new
    if IEEE:
        kw = tl.dot(tl.trans(b_ke).to(tl.float32), b_w.to(tl.float32), input_precision="ieee")
    else:
        kw = tl.dot(tl.trans(b_ke), b_w)
    eye = (kk[:, None] == kk[None, :]).to(tl.float32)
    b_a = tl.exp2(g_last) * eye - kw
    chunk = (i_b * NT + i_t) * H + i_h
    tl.store(A + chunk * K * K + kk[:, None] * K + kk[None, :], b_a, mask=mk[:, None] & mk[None, :])
    if BACKWARD:
        b_q = tl.load(x + rows[:, None] * K + kk[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        b_qg = b_q.to(tl.float32) * tl.where(mt, tl.exp2(b_g), 0.0)[:, None]  # fp32, as FLA's dhu keeps it
        b_do = tl.load(do + rows[:, None] * V + vv[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
        b_dv = tl.load(dv + rows[:, None] * V + vv[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
        if IEEE:
            b_b = tl.dot(tl.trans(b_qg), b_do.to(tl.float32), input_precision="ieee") * scale
            b_b -= tl.dot(tl.trans(b_w).to(tl.float32), b_dv.to(tl.float32), input_precision="ieee")
        else:
            b_b = tl.dot(tl.trans(b_qg), b_do.to(tl.float32)) * scale - tl.dot(tl.trans(b_w), b_dv)
    else:
        b_u = tl.load(x + rows[:, None] * V + vv[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
        if IEEE:
            b_b = tl.dot(tl.trans(b_ke).to(tl.float32), b_u.to(tl.float32), input_precision="ieee")
        else:
            b_b = tl.dot(tl.trans(b_ke), b_u)
    tl.store(Bm + chunk * K * V + kk[:, None] * V + vv[None, :], b_b, mask=mk[:, None] & mv[None, :])


@triton.autotune(configs=[triton.Config({"BV": bv}, num_warps=nw, num_stages=ns)
                          for bv in (16, 32, 64) for nw in (2, 4) for ns in (2, 3, 4)],
                 key=["K", "V", "BK", "REVERSE", "IEEE"])
@triton.jit
def _chain_kernel(A, Bm, S, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                  BV: tl.constexpr, REVERSE: tl.constexpr, IEEE: tl.constexpr):
    """One program per (value tile, sequence x head): s <- A_c s + B_c (forward, c ascending) or
    s <- A_c^T s + B_c (REVERSE, c descending), storing s before each chunk's update at S[c] in S's dtype."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    kk = tl.arange(0, BK)
    vv = i_v * BV + tl.arange(0, BV)
    mk, mv = kk < K, vv < V
    if REVERSE:  # A_c^T: A read with its strides swapped (a load, not a transpose of a product)
        a_off = kk[None, :] * K + kk[:, None]
    else:
        a_off = kk[:, None] * K + kk[None, :]
    s = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(NT):
        if REVERSE:
            c = NT - 1 - i
        else:
            c = i
        chunk = (i_b * NT + c) * H + i_h
        tl.store(S + chunk * K * V + kk[:, None] * V + vv[None, :], s.to(S.dtype.element_ty),
                 mask=mk[:, None] & mv[None, :])
        b_a = tl.load(A + chunk * K * K + a_off, mask=mk[:, None] & mk[None, :], other=0.0)
        b_b = tl.load(Bm + chunk * K * V + kk[:, None] * V + vv[None, :], mask=mk[:, None] & mv[None, :],
                      other=0.0)
        if IEEE:
            s = tl.dot(b_a, s, input_precision="ieee") + b_b
        else:
            s = tl.dot(b_a, s, input_precision="tf32") + b_b


@triton.jit
def _epilogue_kernel(X, S, base, g, out, T, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                     BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BACKWARD: tl.constexpr,
                     IEEE: tl.constexpr):
    """out = base - X S_c (forward: u - w h_c) or base + 2^(g_last - g) * (X S_c) (backward: dv + gated k D_c),
    X S_c with S in its stored dtype and fp32 accumulation; one program per (value tile, chunk, sequence x head)."""
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    t = i_t * BT + tl.arange(0, BT)
    kk = tl.arange(0, BK)
    vv = i_v * BV + tl.arange(0, BV)
    mt, mk, mv = t < T, kk < K, vv < V
    rows = (i_b * T + t) * H + i_h
    b_x = tl.load(X + rows[:, None] * K + kk[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
    chunk = (i_b * NT + i_t) * H + i_h
    b_s = tl.load(S + chunk * K * V + kk[:, None] * V + vv[None, :], mask=mk[:, None] & mv[None, :], other=0.0)
    if IEEE:
        xs = tl.dot(b_x.to(tl.float32), b_s.to(tl.float32), input_precision="ieee")
    else:
        xs = tl.dot(b_x, b_s.to(b_x.dtype))
    m = mt[:, None] & mv[None, :]
    b_base = tl.load(base + rows[:, None] * V + vv[None, :], mask=m, other=0.0).to(tl.float32)
    if BACKWARD:
        last = tl.minimum(i_t * BT + BT, T) - 1
        g_last = tl.load(g + (i_b * T + last) * H + i_h)
        b_g = tl.load(g + rows, mask=mt, other=0.0)
        res = b_base + xs * tl.where(mt, tl.exp2(g_last - b_g), 0.0)[:, None]
    else:
        res = b_base - xs
    tl.store(out + rows[:, None] * V + vv[None, :], res.to(out.dtype.element_ty), mask=m)


def _ieee(t: torch.Tensor) -> bool:
    """fp32 operands (checks), or Triton's CPU interpreter (no bf16 dot): full fp32 products."""
    return t.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"


def _chunks(k: torch.Tensor, chunk: int) -> tuple[int, int, int, int, int, int]:
    B, T, H, K = k.shape
    return B, T, H, K, triton.cdiv(T, chunk), max(16, triton.next_power_of_2(K))


def _transitions(k, w, x, do, dv, g, V, scale, chunk, backward):
    B, T, H, K, NT, BK = _chunks(k, chunk)
    A = torch.empty(B, NT, H, K, K, device=k.device, dtype=torch.float32)
    Bm = torch.empty(B, NT, H, K, V, device=k.device, dtype=torch.float32)
    _prep_kernel[(NT, B * H)](k, w, x, do, dv, g, A, Bm, scale, T, NT, H=H, K=K, V=V, BT=chunk, BK=BK,
                              BV=max(16, triton.next_power_of_2(V)), BACKWARD=backward, IEEE=_ieee(k))
    return A, Bm


def _chain(A, Bm, out_dtype, reverse, ieee):
    B, NT, H, K, V = Bm.shape
    S = torch.empty(B, NT, H, K, V, device=Bm.device, dtype=out_dtype)
    BK = max(16, triton.next_power_of_2(K))
    _chain_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), B * H)](A, Bm, S, NT, H=H, K=K, V=V, BK=BK,
                                                                    REVERSE=reverse, IEEE=ieee)
    return S


def _epilogue(X, S, base, g, chunk, backward):
    B, T, H, K, NT, BK = _chunks(X, chunk)
    V = base.size(-1)
    BV = min(64, max(16, triton.next_power_of_2(V)))
    out = torch.empty_like(base)
    _epilogue_kernel[(triton.cdiv(V, BV), NT, B * H)](X, S, base, g, out, T, NT, H=H, K=K, V=V, BT=chunk, BK=BK,
                                                       BV=BV, BACKWARD=backward, IEEE=_ieee(X))
    return out


def fwd_h(k: torch.Tensor, w: torch.Tensor, u: torch.Tensor, g: torch.Tensor,
          chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """FLA's chunk_gated_delta_rule_fwd_h without an initial or final state: (h (B, NT, H, K, V) in k's dtype, the
    state at each chunk's start; v_new = u - w h like u). k, w (B, T, H, K); u (B, T, H, V); g (B, T, H) fp32."""
    k, w, u, g = (t.contiguous() for t in (k, w, u, g))
    A, Bm = _transitions(k, w, u, u, u, g, u.size(-1), 1.0, chunk, backward=False)
    h = _chain(A, Bm, k.dtype, reverse=False, ieee=_ieee(k))
    return h, _epilogue(w, h, u, g, chunk, backward=False)


def bwd_dhu(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, g: torch.Tensor, do: torch.Tensor,
            dv: torch.Tensor, scale: float, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """FLA's chunk_gated_delta_rule_bwd_dhu without initial / final state gradients: (dh (B, NT, H, K, V) in q's
    dtype, the gradient of the state after each chunk; dv2 = dv + 2^(g_last - g) * (k dh) like dv)."""
    q, k, w, g, do, dv = (t.contiguous() for t in (q, k, w, g, do, dv))
    A, R = _transitions(k, w, q, do, dv, g, do.size(-1), scale, chunk, backward=True)
    dh = _chain(A, R, q.dtype, reverse=True, ieee=_ieee(q))
    return dh, _epilogue(k, dh, dv, g, chunk, backward=True)


def reference(q, k, w, u, g, do, dv, scale, chunk=64):
    """The same four outputs from the two recurrences step by step in float64 (FLA's semantics, no rounding):
    (h, v_new, dh, dv2)."""
    B, T, H, K = k.shape
    V, NT = u.size(-1), triton.cdiv(T, chunk)
    q, k, w, u, g, do, dv = (t.double() for t in (q, k, w, u, g, do, dv))
    h = torch.zeros(B, NT, H, K, V, dtype=torch.float64)
    dh = torch.zeros_like(h)
    v_new, dv2 = torch.empty_like(u), torch.empty_like(dv)
    s = torch.zeros(B, H, K, V, dtype=torch.float64)
    for c in range(NT):
        sl = slice(c * chunk, min(c * chunk + chunk, T))
        h[:, c] = s
        vn = u[:, sl] - torch.einsum("bthk,bhkv->bthv", w[:, sl], s)
        v_new[:, sl] = vn
        gl = g[:, sl.stop - 1]  # (B, H)
        e = torch.exp2(gl[:, None] - g[:, sl])  # (B, t, H)
        s = torch.exp2(gl)[..., None, None] * s + torch.einsum("bthk,bthv->bhkv", k[:, sl] * e[..., None], vn)
    d = torch.zeros(B, H, K, V, dtype=torch.float64)
    for c in reversed(range(NT)):
        sl = slice(c * chunk, min(c * chunk + chunk, T))
        dh[:, c] = d
        gl = g[:, sl.stop - 1]
        e = torch.exp2(gl[:, None] - g[:, sl])
        d2 = dv[:, sl] + torch.einsum("bthk,bhkv->bthv", k[:, sl], d) * e[..., None]
        dv2[:, sl] = d2
        qg = q[:, sl] * torch.exp2(g[:, sl])[..., None]
        d = torch.exp2(gl)[..., None, None] * d + torch.einsum("bthk,bthv->bhkv", qg, do[:, sl]) * scale \
            - torch.einsum("bthk,bthv->bhkv", w[:, sl], d2)
    return h, v_new, dh, dv2
