"""Causal GQA attention of the study's shapes through each implementation the GPU host can run: PyTorch SDPA with
the cuDNN backend (v19's default, the scripts' fallback) and FlashAttention-4's CuTe DSL kernels (flash-attn-4,
the default since v20, carried by tools/gpu/fa4_wheels.sh; skipped with a line saying so where it does not import).

First a check: each implementation against SDPA's math backend on fp32 copies (output, dq, dk, dv; relative
error, limit 2e-2 for bf16 operands) on fresh random inputs. Then, per sequence length, the study's micro-batch
(B x T = TRAIN_BATCH_TOKENS / 8: 49152 tokens up to 16k, 65536 above), 8 query / 4 KV heads of 64, bf16,
(B, T, H, D) tensors as the scripts hold them: forward and forward+backward ms (median of CUDA events) and TFLOP/s
(causal forward 2 B H T^2 D, backward 2.5x that). Exits 1 if a check fails.

    python3 tools/gpu/bench_attention_impls.py [--seq-lens 8192,16384,32768] [--iters 10] [--check-seq-lens 1024,4096]
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.checks import event_ms, positive_ints, rel  # noqa: E402

TOL = 2e-2
H, KV, D = 8, 4, 64


def sdpa(backend):
    def f(q, k, v):
        with sdpa_kernel(backend):
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, enable_gqa=True)
        return y.transpose(1, 2)
    return f


def implementations() -> dict:
    impls = {"cudnn": sdpa(SDPBackend.CUDNN_ATTENTION)}
    try:
        from flash_attn.cute.interface import flash_attn_func
        impls["fa4"] = lambda q, k, v: flash_attn_func(q, k, v, causal=True)[0]
    except Exception as e:  # noqa: BLE001 - report whatever stops the import, then go on without it
        print(f"fa4: not available ({type(e).__name__}: {e})")
    return impls


def inputs(B: int, T: int, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda h: torch.randn(B, T, h, D, device="cuda", dtype=torch.bfloat16, generator=g)  # noqa: E731
    return mk(H), mk(KV), mk(KV), mk(H)


def check(impls: dict, T: int, seed: int) -> bool:
    q, k, v, do = inputs(2, T, seed)
    ref_in = [t.float().requires_grad_(True) for t in (q, k, v)]
    ref = sdpa(SDPBackend.MATH)(*ref_in)
    ref.backward(do.float())
    ok = True
    for name, f in impls.items():
        xs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        y = f(*xs)
        y.backward(do)
        errs = [rel(y, ref)] + [rel(x.grad, r.grad) for x, r in zip(xs, ref_in)]
        good = max(errs) <= TOL
        ok &= good
        print(f"check {name} T={T}: out {errs[0]:.2e} dq {errs[1]:.2e} dk {errs[2]:.2e} dv {errs[3]:.2e} "
              f"{'ok' if good else 'FAIL'}")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", default="8192,16384,32768")
    p.add_argument("--check-seq-lens", default="1024,4096")
    p.add_argument("--iters", type=int, default=10)
    a = p.parse_args()
    if a.iters < 1:
        p.error(f"--iters {a.iters}: expected a positive integer")
    seq_lens = positive_ints(p, "--seq-lens", a.seq_lens)
    check_lens = positive_ints(p, "--check-seq-lens", a.check_seq_lens)
    if not torch.cuda.is_available():
        print("bench_attention_impls: needs a CUDA GPU", file=sys.stderr)
        return 2
    impls = implementations()
    for name, f in impls.items():  # first call: JIT compile (FA4's kernels), kept out of the timings
        t0 = time.time()
        q, k, v, do = inputs(1, 2048, 0)
        xs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        f(*xs).backward(do)
        torch.cuda.synchronize()
        print(f"{name}: first forward+backward {time.time() - t0:.1f} s")
    ok = all([check(impls, T, 100 + i) for i, T in enumerate(check_lens)])
    rows = []
    for T in seq_lens:
        B = (524288 if T > 16384 else 393216) // 8 // T
        if B < 1:
            continue
        q, k, v, do = inputs(B, T, T)
        fwd_flops = 2 * 2 * B * H * T * T * D / 2  # QK^T and PV, causal half
        for name, f in impls.items():
            xs = [t.clone().requires_grad_(True) for t in (q, k, v)]
            with torch.no_grad():
                f_ms = event_ms(lambda: f(*xs), iters=a.iters)
            def fb():
                for x in xs:
                    x.grad = None
                f(*xs).backward(do)
            fb_ms = event_ms(fb, iters=a.iters)
            rows.append((name, T, B, f_ms, fb_ms, fwd_flops / f_ms / 1e9, 3.5 * fwd_flops / fb_ms / 1e9))
    print(f"{'impl':6} {'T':>6} {'B':>3} {'fwd ms':>8} {'fwd+bwd ms':>10} {'fwd TF/s':>9} {'f+b TF/s':>9}")
    for name, T, B, f_ms, fb_ms, ftf, fbtf in rows:
        print(f"{name:6} {T:6d} {B:3d} {f_ms:8.2f} {fb_ms:10.2f} {ftf:9.0f} {fbtf:9.0f}")
    print(f"device: {torch.cuda.get_device_name()} torch:{torch.__version__}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
