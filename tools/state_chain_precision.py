"""Rounding of the v22 candidate's state chain (tools/kernels/state_chain.py) against FLA's forward recurrence, by
emulation in float64 on the CPU: one head of the study's shapes (dk 42, dv 84, chunks of 64) over T tokens, inputs
from tools/check_gdn_fla.py's generator (realistic decays) through the WY form in float64, stored in bf16 as FLA
stores w and u. Three forms of the forward states h (at each chunk's start):
  fp64   the recurrence without rounding (the reference);
  fla    FLA's kernel: fp32 state, its products with bf16 operands (h, and the gated v_new), fp32 accumulation;
  chain  the candidate: A_c = 2^g_last I - k~^T w and B_c = k~^T u in fp32 from a bf16 k~, h <- A_c h + B_c with
         tf32 operands (10-bit mantissa), fp32 accumulation.
Prints each form's relative difference from fp64 for the states as stored (bf16) and for the last fp32 state.

    python3 tools/state_chain_precision.py [--seq-len 32768] [--seed 0]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.check_gdn_fla import make_inputs  # noqa: E402

K, V, C = 42, 84, 64


def bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).double()


def tf32(x: torch.Tensor) -> torch.Tensor:
    """x rounded to TF32 (fp32 with a 10-bit mantissa, round to nearest), back in float64."""
    y = x.float().contiguous().view(torch.int32)
    return ((y + 0x1000) & ~0x1FFF).view(torch.float32).double()


def wy_inputs(T: int, seed: int):
    """k, w, u (bf16-rounded, float64) and the chunk-local cumulative log2 decay of one head."""
    _, k, v, g, b = make_inputs(1, T, 1, K, V, "cpu", seed)
    k, v = bf16(F.normalize(k, dim=-1).double()[0, :, 0]), bf16(v.double()[0, :, 0])
    g, beta = g.double()[0, :, 0], (2 * torch.sigmoid(b)).double()[0, :, 0]
    w, u, g2 = torch.empty(T, K, dtype=torch.float64), torch.empty(T, V, dtype=torch.float64), torch.empty_like(g)
    for c in range(T // C):
        sl = slice(c * C, c * C + C)
        G = g[sl].cumsum(0)
        g2[sl] = G / math.log(2)
        A = torch.tril(beta[sl, None] * torch.exp(G[:, None] - G[None, :]) * (k[sl] @ k[sl].T), -1)
        inv = torch.linalg.inv(torch.eye(C, dtype=torch.float64) + A)
        u[sl], w[sl] = inv @ (beta[sl, None] * v[sl]), inv @ (beta[sl, None] * torch.exp(G)[:, None] * k[sl])
    return k, bf16(w), bf16(u), g2


def states(k, w, u, g2, form: str) -> torch.Tensor:
    h, out = torch.zeros(K, V, dtype=torch.float64), []
    for c in range(k.size(0) // C):
        sl = slice(c * C, c * C + C)
        gl = g2[sl][-1]
        e = torch.exp2(gl - g2[sl])
        out.append(h.clone())
        if form == "fp64":
            h = 2 ** gl * h + (k[sl] * e[:, None]).T @ (u[sl] - w[sl] @ h)
        elif form == "fla":
            v_new = (u[sl] - w[sl] @ bf16(h)).float().double()
            h = (2 ** gl * h + k[sl].T @ bf16(v_new * e[:, None])).float().double()
        else:
            ke = bf16(k[sl] * e[:, None])
            A = (2 ** gl * torch.eye(K, dtype=torch.float64) - ke.T @ w[sl]).float().double()
            h = (tf32(A) @ tf32(h) + (ke.T @ u[sl]).float().double()).float().double()
    out.append(h)
    return torch.stack(out)


def errors(T: int, seed: int) -> dict[str, tuple[float, float]]:
    """form -> (stored bf16 states vs fp64, last fp32 state vs fp64)."""
    k, w, u, g2 = wy_inputs(T, seed)
    ref = states(k, w, u, g2, "fp64")
    out = {}
    for form in ("fla", "chain"):
        hs = states(k, w, u, g2, form)
        out[form] = (((bf16(hs[:-1]) - ref[:-1]).norm() / ref[:-1].norm()).item(),
                     ((hs[-1] - ref[-1]).norm() / ref[-1].norm()).item())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=32768)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.seq_len < C or a.seq_len % C:
        p.error(f"--seq-len {a.seq_len}: expected a positive multiple of {C}")
    for form, (stored, last) in errors(a.seq_len, a.seed).items():
        print(f"state_chain_precision T={a.seq_len} seed={a.seed} form:{form} stored_bf16_vs_fp64:{stored:.3e} "
              f"last_state_vs_fp64:{last:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
