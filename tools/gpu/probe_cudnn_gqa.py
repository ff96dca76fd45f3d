"""Does SDPA's cuDNN backend accept enable_gqa (K/V with fewer heads) on this PyTorch? Prints one line per case,
with the max abs difference against the math backend in fp32 and the fwd+bwd time of each backend."""
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def run(backend, q, k, v, gqa):
    with sdpa_kernel([backend]):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        out.sum().backward()
    return out


torch.manual_seed(0)
for T in (8192, 32768):
    B = max(1, 65536 // T)
    q = torch.randn(B, 8, T, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, 4, T, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, 4, T, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            out = run(backend, q, k, v, True)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(5):
                run(backend, q, k, v, True)
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t) / 5 * 1e3
            err = float("nan")
            if T <= 8192:  # the fp32 math reference materialises T x T scores: first sequence only
                with sdpa_kernel([SDPBackend.MATH]), torch.no_grad():
                    ref = F.scaled_dot_product_attention(q[:1].float(), k[:1].float(), v[:1].float(),
                                                         is_causal=True, enable_gqa=True)
                err = (out[:1].float() - ref).abs().max().item()
            print(f"gqa_probe T:{T} B:{B} backend:{name} enable_gqa:ok max_abs_err:{err:.3e} fwd_bwd_ms:{ms:.2f}")
        except Exception as e:  # noqa: BLE001
            print(f"gqa_probe T:{T} B:{B} backend:{name} enable_gqa:FAILED {type(e).__name__}: {str(e)[:200]}")
