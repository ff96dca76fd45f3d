"""Inductor's mix-order reductions and their split size (PERF_NOTES v17). In the backward of
`x + s * rms_norm(x)` inductor fuses the row reduction (RMSNorm's backward) with the column one (the gradient of
the per-channel scale s) into one kernel that writes per-split partial sums; the wrapper then reduces them with an
aten `sum(dim=0)` (in the baseline's 8k profile: 280 such sums per step, ~8.8 us each). The split size sets how many
partial rows there are. For inductor's heuristic and each given split size: compile forward + backward at
(rows, dim) on CUDA, check output and gradients against eager, count the wrapper's sums, and time the backward's
kernels with the profiler (fused kernel, wrapper sums, the rest), per iteration.

    python3 tools/gpu/bench_mix_order_split.py [--rows 49152] [--dim 512] [--splits 32,64,128] [--iters 50]
"""
import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.checks import positive_ints  # noqa: E402
from tools.inductor_code import launch_name, launches  # noqa: E402


def block(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The residual update of the scripts' blocks with the mixer left out: x + s * rms_norm(x) (bf16 activations,
    an fp32 scale cast at use, as under autocast)."""
    return x + s.to(x.dtype) * F.rms_norm(x, (x.size(-1),))


def run(split: int | None, x, s, g, iters: int):
    from torch._inductor.utils import run_and_get_code
    from torch.profiler import ProfilerActivity, profile
    torch._dynamo.reset()
    with torch._inductor.config.patch({"triton.mix_order_reduction_split_size": split}):
        f = torch.compile(block, dynamic=False)

        def step():
            xr, sr = x.detach().requires_grad_(), s.detach().requires_grad_()
            out = f(xr, sr)
            out.backward(g)
            return out, xr.grad, sr.grad

        (out, gx, gs), codes = run_and_get_code(step)
        sums = sum(launch_name(line) == "wrapper.sum" for code in codes for line in launches(code))
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                step()
            torch.cuda.synchronize()
    us = defaultdict(float)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kind = "wrapper_sum" if "reduce_kernel" in e.name else "fused" if "rms_norm_backward" in e.name \
                else "other"
            us[kind] += e.device_time_total / iters
    return out, gx, gs, sums, us


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=49152, help="tokens per micro-batch (6 x 8192 in the 8k preset)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--splits", default="32,64,128", help="split sizes besides the heuristic's")
    p.add_argument("--iters", type=int, default=50)
    a = p.parse_args()
    a.splits = positive_ints(p, "--splits", a.splits)
    if a.rows < 1 or a.dim < 1 or a.iters < 1:
        p.error(f"--rows {a.rows} --dim {a.dim} --iters {a.iters}: expected positive numbers")
    if not torch.cuda.is_available():
        sys.exit("bench_mix_order_split: needs a CUDA device (mix-order reductions are Triton code)")
    if not hasattr(torch._inductor.config.triton, "mix_order_reduction_split_size"):
        sys.exit(f"bench_mix_order_split: torch {torch.__version__} has no mix-order reduction split setting")
    torch.manual_seed(0)
    dev = torch.device("cuda")
    x = torch.randn(a.rows, a.dim, device=dev, dtype=torch.bfloat16)
    s = 1 + 0.1 * torch.randn(a.dim, device=dev)
    g = torch.randn(a.rows, a.dim, device=dev, dtype=torch.bfloat16)
    xr, sr = x.clone().requires_grad_(), s.clone().requires_grad_()
    ref = block(xr, sr)
    ref.backward(g)
    print(f"torch {torch.__version__} card {torch.cuda.get_device_name()} rows {a.rows} dim {a.dim} iters {a.iters}")
    print("split | wrapper sums | fused us | wrapper sum us | other us | total us | max rel err out / dx / ds")
    for split in [None] + a.splits:
        out, gx, gs, sums, us = run(split, x, s, g, a.iters)
        errs = [((u.float() - v.float()).norm() / v.float().norm()).item() for u, v in
                ((out, ref), (gx, xr.grad), (gs, sr.grad))]
        ok = max(errs) < 1e-2  # bf16 activations (eager's reference rounds to bf16 as well): ~3e-3 seen
        print(f"{'heuristic' if split is None else split} | {sums} | {us['fused']:.1f} | {us['wrapper_sum']:.1f} | "
              f"{us['other']:.1f} | {sum(us.values()):.1f} | " + " / ".join(f"{e:.1e}" for e in errs) +
              ("" if ok else "  MISMATCH"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
