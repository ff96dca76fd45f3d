"""GPU benchmark and check of the hybrid's Triton conv + SiLU kernels (train_gpt_gdn.build_conv_kernels) of two
script versions in one process: for each shape, each version's forward and backward against the fp32 PyTorch form
(output, dx, dweight; relative error, tolerance 2e-2 as tools/check_gdn_fla.py), then the GPU time of each
version's forward and backward (CUDA events around a CUDA graph of 20 calls, after warm-up and autotuning) and
the new/old ratio. The kernels are called directly (no custom-op registration), so two versions can sit side by
side.

    python3 tools/bench_conv_kernels.py --old .bench_old [--new .] [--shapes 6x8192x336,6x8192x672,2x32768x672]
                                        [--x-row-width 2032]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.checks import graph_ms, rel  # noqa: E402

TOL = 2e-2


def load_kernels(script_dir: str, tag: str):
    path = Path(script_dir) / "train_gpt_gdn.py"
    spec = importlib.util.spec_from_file_location(f"gdn_{tag}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_conv_kernels(), mod.causal_conv1d_silu


def parse_shapes(p: argparse.ArgumentParser, raw: str) -> list[tuple[int, int, int]]:
    out = []
    for item in raw.split(","):
        parts = item.strip().split("x")
        if len(parts) != 3 or not all(x.isdigit() and int(x) > 0 for x in parts):
            p.error(f"--shapes: '{item}' is not BxTxD (three positive integers, e.g. 6x8192x336)")
        out.append(tuple(int(x) for x in parts))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, help="directory with the old train_gpt_gdn.py")
    p.add_argument("--new", default=".", help="directory with the new train_gpt_gdn.py")
    p.add_argument("--shapes", default="6x8192x336,6x8192x672,2x32768x336,2x32768x672")
    p.add_argument("--x-row-width", type=int, default=0,
                   help="x as the first D columns of a (B, T, W) tensor, as the layer's q/k/v slices of its fused "
                        "projection are (2032 at the presets); 0: contiguous x")
    a = p.parse_args(argv)
    shapes = parse_shapes(p, a.shapes)
    if a.x_row_width and any(d > a.x_row_width for _, _, d in shapes) or a.x_row_width < 0:
        p.error(f"--x-row-width {a.x_row_width}: expected 0 or a width >= every shape's D")
    for opt, d in (("--old", a.old), ("--new", a.new)):
        if not (Path(d) / "train_gpt_gdn.py").is_file():
            p.error(f"{opt} {d}: no train_gpt_gdn.py there (expected a directory holding one)")
    if not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    versions = {"old": load_kernels(a.old, "old"), "new": load_kernels(a.new, "new")}
    print(f"card:{torch.cuda.get_device_name()} torch:{torch.__version__} old:{a.old} new:{a.new} "
          f"x_row_width:{a.x_row_width or 'contiguous'}")
    failed = 0
    for B, T, D in shapes:
        torch.manual_seed(B * T + D)
        x = torch.randn(B, T, a.x_row_width or D, device="cuda").bfloat16()[..., :D]
        w = (torch.randn(D, 4, device="cuda") * 0.5).bfloat16()
        dy = torch.randn(B, T, D, device="cuda").bfloat16()
        xr, wr = x.float().requires_grad_(True), w.float().requires_grad_(True)
        ref_fn = versions["new"][1]
        y_ref = ref_fn(xr, wr)
        y_ref.backward(dy.float())
        times = {}
        for tag, ((fwd, bwd), _) in versions.items():
            y = fwd(x, w)
            dx, dw = bwd(x, w, dy)
            for what, got, ref in (("y", y, y_ref), ("dx", dx, xr.grad), ("dweight", dw, wr.grad)):
                err = rel(got.float(), ref.float())
                failed += err > TOL
                print(f"{'ok  ' if err <= TOL else 'FAIL'} {tag} B={B} T={T} D={D} {what:8s} rel_err={err:.2e} "
                      f"tol={TOL:.0e}")
            times[tag] = (graph_ms(lambda: fwd(x, w)), graph_ms(lambda: bwd(x, w, dy)))
        (fo, bo), (fn, bn) = times["old"], times["new"]
        gb = 3 * x.numel() * x.element_size() / 1e9  # backward's least traffic: x, dy read, dx written
        print(f"conv_time B={B} T={T} D={D} fwd old:{fo:.3f} new:{fn:.3f} ms ratio:{fn / fo:.2f} "
              f"bwd old:{bo:.3f} new:{bn:.3f} ms ratio:{bn / bo:.2f} bwd_floor_gb:{gb:.3f}")
    print(f"conv_check: {'all ok' if not failed else f'{failed} FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
