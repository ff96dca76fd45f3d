"""Which (config, shape) of one of our chunk kernels faults on the GPU: each cell of the matrix (an autotune config
of tools/kernels/KERNEL.py's kernel, held alone, at one BxT of the bench's inputs) runs in a process of its own,
since a CUDA fault ends the process's context and may come only in some processes (triton-lang/triton issue 10486
saw an illegal access in 40-60% of fresh processes for a kernel of several tl.dot products on sm_90). A cell runs
ours once, waits for it, and compares its outputs with FLA's path on the same inputs.

    python3 tools/gpu/fault_matrix.py --kernel fwd_o [--shapes 1x2048,2x2048,1x32768,2x32768] [--configs all]
        [--repeat 1] [--sanitizer] [--keep DIR]

One `fault_cell` line a cell (result ok with max_rel_diff, fault with the error's last line, or timeout), then a
`fault_summary` line per config. --sanitizer runs each cell under compute-sanitizer (memcheck) where the image has
it, whose first report names the faulting access (--keep DIR keeps each cell's whole output). It located the v30
kernel's illegal access: one config's out-of-bounds shared-memory read (PERF_NOTES v30).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

KERNELS = ("fwd_o", "dqkwg", "wy_bwd")  # tools/kernels/K.py with K(), kernels[K], fla_path; bench_K.make_inputs
FAULT_MARKERS = ("illegal memory access", "illegal instruction", "misaligned address", "CUDA error",
                 "Invalid __shared__", "Invalid __global__", "unspecified launch failure")


def run_cell(kernel: str, config: int, B: int, T: int, seed: int = 0, device: str = "cuda", dtype=None) -> float:
    """Our kernel held to its autotune config number `config`, once at BxT of the bench's inputs, waited for:
    the largest relative difference of its outputs from FLA's path's."""
    import importlib

    import torch

    from tools.checks import rel
    dtype = dtype or torch.bfloat16
    mod = importlib.import_module(f"tools.kernels.{kernel}")
    bench = importlib.import_module(f"tools.gpu.bench_{kernel}")
    tuner = mod.kernels[kernel]
    if not 0 <= config < len(tuner.configs):
        raise ValueError(f"config {config}: {kernel} has configs 0..{len(tuner.configs) - 1}")
    x = bench.make_inputs(B, T, seed, device, dtype)
    as_tuple = lambda out: out if isinstance(out, tuple) else (out,)  # noqa: E731
    fla = as_tuple(mod.fla_path(**x))
    if device == "cuda":
        torch.cuda.synchronize()  # a fault from here on is ours
    tuner.configs = [tuner.configs[config]]
    tuner.cache.clear()
    ours = as_tuple(getattr(mod, kernel)(**x))
    if device == "cuda":
        torch.cuda.synchronize()
    return max(rel(o.float(), f.float()) for o, f in zip(ours, fla))


def config_names(kernel: str) -> list[str]:
    """The kernel's autotune configs, named as the training log's autotune_picks line names them."""
    import importlib

    from tools.gpu.bench_recurrence_tiles import config_name
    return [config_name(c) for c in importlib.import_module(f"tools.kernels.{kernel}").kernels[kernel].configs]


def classify(rc: int | None, out: str) -> str:
    """A cell's result from its process's exit code (None: timed out) and output."""
    if rc is None:
        return "timeout"
    lines = [ln for ln in out.splitlines() if ln.strip()]
    ok = [ln for ln in lines if ln.startswith("cell_ok ")]  # not last under the sanitizer: its summary follows
    if rc == 0 and ok:
        return "ok " + ok[-1].split(" ", 1)[1]
    hits = [ln.strip() for ln in lines if any(m in ln for m in FAULT_MARKERS)]
    return ("fault " if hits else f"error rc={rc} ") + (hits[0] if hits else (lines[-1] if lines else "(no output)"))


def matrix(kernel: str, configs: list[int], shapes: list[tuple[int, int]], repeat: int, cell_cmd, timeout: float,
           names: list[str], keep: Path | None = None) -> dict[int, list[str]]:
    """Run every cell in a process of its own (cell_cmd(config, B, T) -> argv), print a `fault_cell` line each;
    {config: [its results]}. keep: a directory for each cell's whole output (a sanitizer report names the access,
    its thread and the kernel's code address; the result line keeps only its first line)."""
    results: dict[int, list[str]] = {c: [] for c in configs}
    for B, T in shapes:
        for c in configs:
            for r in range(repeat):
                t0, argv = time.time(), cell_cmd(c, B, T)
                try:
                    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
                    out = p.stdout + p.stderr
                    res = classify(p.returncode, out)
                except subprocess.TimeoutExpired as e:
                    out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                                  for x in (e.stdout, e.stderr))
                    res = classify(None, "")
                if keep is not None:
                    f = keep / f"cell_{kernel}_{names[c]}_{B}x{T}_try{r + 1}.txt"
                    tmp = f.with_suffix(".tmp")
                    tmp.write_text(f"{' '.join(argv)}\nresult: {res}\n\n{out}")
                    tmp.replace(f)
                results[c].append(res)
                print(f"fault_cell kernel:{kernel} config:{names[c]} shape:{B}x{T} try:{r + 1} "
                      f"seconds:{time.time() - t0:.1f} result:{res}", flush=True)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", required=True, choices=KERNELS)
    p.add_argument("--shapes", default="1x2048,2x2048,1x32768,2x32768")
    p.add_argument("--configs", default="all", help="'all' or comma-separated config numbers (0-based)")
    p.add_argument("--repeat", type=int, default=1, help="processes per cell (a fault may come in some only)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a cell may take")
    p.add_argument("--sanitizer", action="store_true", help="each cell under compute-sanitizer's memcheck")
    p.add_argument("--keep", type=Path, metavar="DIR", help="write each cell's whole output to DIR/cell_*.txt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cpu: fp32 under Triton's interpreter (TRITON_INTERPRET=1), for the tests")
    p.add_argument("--cell", nargs=3, type=int, metavar=("CONFIG", "B", "T"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.cell:
        c, B, T = a.cell
        import torch
        dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
        print(f"cell_ok max_rel_diff:{run_cell(a.kernel, c, B, T, a.seed, a.device, dtype):.3e}", flush=True)
        return 0
    from tools.gpu.bench_recurrence_tiles import parse_shapes
    shapes = parse_shapes(p, a.shapes)
    if a.repeat < 1:
        p.error(f"--repeat {a.repeat}: expected a positive integer")
    if not a.timeout > 0:
        p.error(f"--timeout {a.timeout:g}: expected a positive number of seconds")
    if a.keep is not None:
        try:
            a.keep.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            p.error(f"--keep {a.keep}: cannot create the directory ({e.strerror})")
    names = config_names(a.kernel)
    if a.configs == "all":
        configs = list(range(len(names)))
    else:
        try:
            configs = [int(s) for s in a.configs.split(",")]
        except ValueError:
            configs = [-1]
        if any(not 0 <= c < len(names) for c in configs):
            p.error(f"--configs {a.configs!r}: expected 'all' or numbers in 0..{len(names) - 1} ({a.kernel}'s "
                    f"{len(names)} configs: {', '.join(f'{i}={n}' for i, n in enumerate(names))})")
    if a.device == "cuda":  # options first (as the other GPU tools), then the device, before any cell
        import torch
        if not torch.cuda.is_available():
            print("fault_matrix: --device cuda needs a CUDA device (cpu: under Triton's interpreter)", file=sys.stderr)
            return 2
    prefix = []
    if a.sanitizer:
        tool = shutil.which("compute-sanitizer") or next(
            (str(q) for q in Path("/usr/local").glob("cuda*/bin/compute-sanitizer") if os.access(q, os.X_OK)), None)
        if tool is None:
            p.error("--sanitizer: compute-sanitizer not found on PATH nor under /usr/local/cuda*/bin")
        prefix = [tool, "--tool", "memcheck", "--print-limit", "3", "--error-exitcode", "99"]
    me = str(Path(__file__).resolve())
    cmd = lambda c, B, T: prefix + [sys.executable, me, "--kernel", a.kernel, "--seed", str(a.seed),  # noqa: E731
                                    "--device", a.device, "--cell", str(c), str(B), str(T)]
    results = matrix(a.kernel, configs, shapes, a.repeat, cmd, a.timeout, names, a.keep)
    for c, res in results.items():
        kinds = [r.split(" ", 1)[0] for r in res]
        print(f"fault_summary kernel:{a.kernel} config:{names[c]} cells:{len(res)} ok:{kinds.count('ok')} "
              f"fault:{kinds.count('fault')} other:{len(res) - kinds.count('ok') - kinds.count('fault')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
