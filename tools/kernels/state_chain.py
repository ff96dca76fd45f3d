"""The hybrid's own state recurrences (v22, GDN_STATE_CHAIN=1): train_gpt_gdn.build_state_kernels, FLA's
chunk_gated_delta_rule_fwd_h and chunk_gated_delta_rule_bwd_dhu as a chunk-parallel part plus a chain of one matrix
product per chunk (the derivation is in that function's docstring), here for the checks and the benchmark, with a
float64 step-by-step reference of both recurrences.

    fwd_h(k, w, u, g) -> (h, v_new)          bwd_dhu(q, k, w, g, do, dv, scale) -> (dh, dv2)
    prep(k, w, x, do, dv, g, V, scale, backward) -> (A, B)   (the chunk-parallel part; x = u forward, q backward)
    kernels: {"prep", "chain", "epilogue"}  (the Triton kernels, for the sm_90 compile test)
    script: train_gpt_gdn.py as loaded here (one copy for the checks and the benchmark)

Inputs and outputs are FLA's (B, T, H, .) layouts and dtypes; the training script stays self-contained, this module
imports it (train_gpt_gdn.py imports no triton at module level, so this works on a machine without a GPU).
"""

from __future__ import annotations

from pathlib import Path

import torch
import triton

from tools.gpu.cuda_model import load_script_file

script = load_script_file(Path(__file__).resolve().parents[2] / "train_gpt_gdn.py", "train_gpt_gdn_state_kernels")
_built = script.build_state_kernels()
fwd_h, bwd_dhu, v_new, kernels = _built["fwd_h"], _built["bwd_dhu"], _built["v_new"], _built["kernels"]
prep = _built["prep"]  # (A_c, B_c / R_c) of each chunk: the chunk-parallel part alone (tools/gpu/bench_state_prep.py)


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
