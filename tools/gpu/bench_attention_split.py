"""cuDNN's causal attention per sequence length, and causal attention cut into query chunks (each chunk: one
non-causal call over the keys before it, one causal call over its own block, merged by their log-sum-exps).

Prints, for the study's attention shapes (B x T = 65536 tokens per micro-step, 8 query / 4 KV heads of 64), the
forward and forward+backward times (CUDA events, median of ITERS) and their TFLOP/s (causal forward 2 B H T^2 D
FLOPs, backward 2.5x), and each split's largest differences from the whole call (output, dq, dk, dv, relative to
each tensor's largest magnitude). Needs no wheelhouse.

    python3 tools/gpu/bench_attention_split.py [--seq-lens 8192,16384,32768] [--chunks 2,4] [--iters 10]
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.checks import event_ms, positive_ints  # noqa: E402

ATEN = torch.ops.aten


def cudnn_fwd(q, k, v, causal: bool, scale: float):
    r = ATEN._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)
    return r  # (out, lse, cum_q, cum_k, max_q, max_k, seed, offset, debug)


class ChunkedCausalAttention(torch.autograd.Function):
    """Causal attention as n query chunks: chunk i = softmax over [its own block, causal] and [all earlier keys,
    unmasked], merged exactly through the two calls' log-sum-exps; the backward gives each call the merged output
    and log-sum-exp (as a split-KV flash backward does), so each call's dq/dk/dv are its terms of the whole's."""

    @staticmethod
    def forward(ctx, q, k, v, n: int, scale: float):
        T = q.size(2)
        c = T // n
        B, H, _, D = q.shape
        out = q.new_empty(B, T, H, D).transpose(1, 2)  # q's layout, as SDPA's output
        lses, calls = [], []
        for i in range(n):
            qi = q[:, :, i * c:(i + 1) * c]
            diag = cudnn_fwd(qi, k[:, :, i * c:(i + 1) * c], v[:, :, i * c:(i + 1) * c], True, scale)
            if i == 0:
                out[:, :, :c] = diag[0]
                lses.append(diag[1])
                calls.append((diag,))
                continue
            past = cudnn_fwd(qi, k[:, :, :i * c], v[:, :, :i * c], False, scale)
            lse = torch.logaddexp(diag[1], past[1])
            o = (diag[0].float() * torch.exp(diag[1] - lse) + past[0].float() * torch.exp(past[1] - lse))
            out[:, :, i * c:(i + 1) * c] = o
            lses.append(lse)
            calls.append((diag, past))
        ctx.save_for_backward(q, k, v, out)
        ctx.lses, ctx.calls, ctx.n, ctx.scale = lses, calls, n, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out = ctx.saved_tensors
        n, scale, T = ctx.n, ctx.scale, q.size(2)
        c = T // n
        dq = torch.zeros_like(q)
        dk, dv = torch.zeros_like(k, dtype=torch.float32), torch.zeros_like(v, dtype=torch.float32)
        dout = dout.contiguous() if dout.stride() != out.stride() else dout
        for i in range(n):
            sl = slice(i * c, (i + 1) * c)
            qi, oi, doi, lse = q[:, :, sl], out[:, :, sl], dout[:, :, sl], ctx.lses[i]
            pieces = [(slice(i * c, (i + 1) * c), True, ctx.calls[i][0])]
            if i > 0:
                pieces.append((slice(0, i * c), False, ctx.calls[i][1]))
            dqi = None
            for ks, causal, r in pieces:
                g = ATEN._scaled_dot_product_cudnn_attention_backward(
                    doi, qi, k[:, :, ks], v[:, :, ks], oi, lse, r[6], r[7], None,
                    r[2], r[3], r[4], r[5], 0.0, causal, scale=scale)
                dqi = g[0].float() if dqi is None else dqi + g[0].float()
                dk[:, :, ks] += g[1].float()
                dv[:, :, ks] += g[2].float()
            dq[:, :, sl] = dqi.to(q.dtype)
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None


def make_inputs(B, T, H, Hkv, D, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    # (B, T, H, D) in memory, used as (B, H, T, D) views: the scripts' layout (PERF_NOTES v16).
    q = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    k = torch.randn(B, T, Hkv, D, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    v = torch.randn(B, T, Hkv, D, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    do = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    return [t.requires_grad_() for t in (q, k, v)] + [do]


def whole(q, k, v, backend):
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-lens", default="8192,16384,32768")
    ap.add_argument("--chunks", default="2,4")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=65536, help="B x T per micro-step")
    a = ap.parse_args()
    seq_lens, chunks = positive_ints(ap, "--seq-lens", a.seq_lens), positive_ints(ap, "--chunks", a.chunks)
    if a.iters < 1 or a.tokens < 1:
        ap.error(f"--iters {a.iters} / --tokens {a.tokens}: expected positive integers")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device (cuDNN attention)")
    H, Hkv, D = 8, 4, 64
    print(f"card:{torch.cuda.get_device_name().replace(' ', '_')} torch:{torch.__version__} "
          f"cudnn:{torch.backends.cudnn.version()}")
    for T in seq_lens:
        B = max(1, a.tokens // T)
        q, k, v, do = make_inputs(B, T, H, Hkv, D)
        fl = 2 * B * H * T * T * D
        scale = D ** -0.5
        ref_out = ref_grads = None
        cases = [("cudnn", None), ("flash", None)] + [(f"cudnn_chunks{n}", n) for n in chunks if T % n == 0]
        for name, n in cases:
            if n is None:
                backend = SDPBackend.CUDNN_ATTENTION if name == "cudnn" else SDPBackend.FLASH_ATTENTION
                f = (lambda backend=backend: whole(q, k, v, backend))
            else:
                f = (lambda n=n: ChunkedCausalAttention.apply(q, k, v, n, scale))
            try:
                out = f()
                grads = torch.autograd.grad(out, (q, k, v), do)
            except Exception as e:  # noqa: BLE001
                print(f"attn T:{T} B:{B} case:{name} FAILED {type(e).__name__}: {str(e)[:300]}")
                continue
            err = ""
            if ref_out is None:
                ref_out, ref_grads = out.detach(), [g.detach() for g in grads]
            else:
                rel = [((x.float() - r.float()).abs().max() / r.float().abs().max()).item()
                       for x, r in zip([out] + list(grads), [ref_out] + ref_grads)]
                err = " rel_err_vs_cudnn out:{:.2e} dq:{:.2e} dk:{:.2e} dv:{:.2e}".format(*rel)
            with torch.no_grad():
                fwd_ms = event_ms(f, a.iters)
            fb_ms = event_ms(lambda: torch.autograd.grad(f(), (q, k, v), do), a.iters)
            print(f"attn T:{T} B:{B} case:{name} fwd_ms:{fwd_ms:.3f} fwd_tflops:{fl / fwd_ms / 1e9:.0f} "
                  f"fwd_bwd_ms:{fb_ms:.3f} bwd_ms:{fb_ms - fwd_ms:.3f} "
                  f"bwd_tflops:{2.5 * fl / (fb_ms - fwd_ms) / 1e9:.0f} "
                  f"fwd_bwd_tflops:{3.5 * fl / fb_ms / 1e9:.0f}{err}", flush=True)


if __name__ == "__main__":
    main()
