"""GPU check for the attention fast paths: the script's CausalSelfAttention through FlashAttention-4 (ATTN_BACKEND=fa4;
its configure line says when it fell back to cuDNN) and with each SDPA backend (cuDNN and flash
with native GQA where the backend takes it, and cuDNN with K/V expanded to all heads, the fallback for PyTorch
builds without GQA in cuDNN) against the math backend on fp32 copies, outputs and the
gradients of the input and of every weight, on fresh random inputs at the study's shapes (bf16 autocast).
Exits 1 if a relative error exceeds 2e-2 (bf16 operands).

    python3 tools/check_attention.py [--seq-lens 1024,8192]
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.checks import positive_ints, rel  # noqa: E402
gpt = importlib.import_module("train_gpt")
TOL = 2e-2


def run(layer, x, do, backend: str, autocast: bool):
    args = gpt.Hyperparameters()
    args.attn_backend = backend.split("-")[0]
    print(gpt.configure_attention(args, torch.device("cuda")))
    if backend.endswith("-expanded"):
        gpt.SDPA_NATIVE_GQA = False
    layer.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        y = layer(xi)
    y.float().backward(do)
    return y.float(), [xi.grad] + [p.grad for p in layer.parameters()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", default="1024,8192")
    a = p.parse_args()
    seq_lens = positive_ints(p, "--seq-lens", a.seq_lens)
    if not torch.cuda.is_available():
        print("error: this check needs a CUDA GPU", file=sys.stderr)
        return 2
    failed = total = 0
    for T in seq_lens:
        torch.manual_seed(T)
        layer = gpt.CausalSelfAttention(512, 8, 4, 10000.0, 1.5).cuda()
        torch.nn.init.normal_(layer.proj.weight, std=0.02)  # zero-init would hide the gradients upstream
        x, do = torch.randn(2, T, 512, device="cuda"), torch.randn(2, T, 512, device="cuda")
        ref_y, ref_g = run(layer, x, do, "math", autocast=False)  # fp32 math reference
        for backend in ("fa4", "cudnn", "cudnn-expanded", "flash"):
            y, g = run(layer, x, do, backend, autocast=True)
            names = ["out", "dx"] + [f"d{n}" for n, _ in layer.named_parameters()]
            for name, val, ref in zip(names, [y] + g, [ref_y] + ref_g):
                err = rel(val, ref)
                total += 1
                failed += err > TOL
                print(f"{'ok  ' if err <= TOL else 'FAIL'} T={T} {backend:14s} vs fp32 math {name:12s} rel_err={err:.2e}")
    print(f"attention_check: {total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
