"""Run a training script (same process, same code path) under torch.profiler and print where the GPU time
goes: the top kernels by self CUDA time, summed over the whole run. Use a short run, e.g.

    ITERATIONS=6 WARMUP_STEPS=3 VAL_MAX_TOKENS=65536 python3 tools/profile_script.py train_gpt_gdn.py [--top 30]
"""

from __future__ import annotations

import argparse
import runpy
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("script")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", default=None, help="also write the full table to this file")
    a = p.parse_args()
    if not Path(a.script).is_file():
        p.error(f"script {a.script}: no such file")
    sys.argv = [a.script]
    t_start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        try:
            runpy.run_path(a.script, run_name="__main__")
        except SystemExit as e:
            if e.code not in (0, None):
                raise
    averages = prof.key_averages()
    table = averages.table(sort_by="self_cuda_time_total", row_limit=a.top, max_name_column_width=70)
    print(table)
    # GPU busy time against wall time: far below 1 means the step waits on the CPU (launches, syncs, breaks).
    busy_ms = sum(e.self_device_time_total for e in averages) / 1000.0
    print(f"profile_total gpu_self_ms:{busy_ms:.1f} wall_ms:{1000.0 * (time.perf_counter() - t_start):.1f}")
    if a.out:
        Path(a.out).write_text(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=200,
                                                         max_name_column_width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main())
