"""Run a training script (same process, same code path) under torch.profiler and print where the GPU time of a
few training steps goes: the top kernels by self device time over --active steps, recorded after --skip steps
(compile and warm-up) and one profiler warm-up step. Steps are counted by Muon's optimiser step (one per training
step, warm-up steps included), so the trace stays small. Use a short run, e.g.

    ITERATIONS=6 WARMUP_STEPS=3 VAL_MAX_TOKENS=65536 python3 tools/profile_script.py train_gpt_gdn.py --skip 5 --active 2

The profile_per_step line compares GPU busy time (the kernel rows, each counted once) with the wall time of a
profiled step: far below 1 means the step waits on the CPU (launches, syncs, graph breaks); the profiler's own
CPU work stretches that wall time, so compare the busy time with an unprofiled step's time as well.
"""

from __future__ import annotations

import argparse
import runpy
import sys
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.profile_summary import summarize  # noqa: E402
from tools.trace_gaps import main as trace_gaps  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("script")
    p.add_argument("--skip", type=int, default=5, help="training steps (warm-up included) before recording")
    p.add_argument("--active", type=int, default=2, help="training steps recorded")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", default=None, help="also write the full table to this file")
    p.add_argument("--trace", default=None, help="also write the chrome trace of the recorded steps here (.json or "
                   ".json.gz) and, on a GPU, print where the GPU sat idle (tools/trace_gaps.py)")
    a = p.parse_args(argv)
    if not Path(a.script).is_file():
        p.error(f"script {a.script}: no such file")
    if a.skip < 0 or a.active < 1:
        p.error("--skip must be >= 0 and --active >= 1")
    stamps: list[float] = []  # wall time at the end of each training step
    result = {}

    def on_step(optimizer, args, kwargs) -> None:
        if type(optimizer).__name__ != "Muon":
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        prof.step()

    def ready(pr) -> None:
        result.setdefault("averages", pr.key_averages())
        if a.trace:
            pr.export_chrome_trace(a.trace)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    sched = schedule(wait=a.skip, warmup=1, active=a.active, repeat=1)
    sys.argv = [a.script]
    with profile(activities=activities, schedule=sched,
                 on_trace_ready=ready) as prof:
        handle = register_optimizer_step_post_hook(on_step)
        try:
            runpy.run_path(a.script, run_name="__main__")
        except SystemExit as e:
            if e.code not in (0, None):
                raise
        finally:
            handle.remove()
    last = a.skip + 1 + a.active  # training steps the recording needs
    if "averages" not in result or len(stamps) < last:
        print(f"error: the run made {len(stamps)} training steps, the recording needs {last} "
              f"(--skip {a.skip} + 1 + --active {a.active}): raise ITERATIONS or lower --skip", file=sys.stderr)
        return 1
    averages = result["averages"]
    print(averages.table(sort_by="self_device_time_total", row_limit=a.top, max_name_column_width=70))
    table = averages.table(sort_by="self_device_time_total", row_limit=-1, max_name_column_width=120)
    # Busy time from the kernel rows only, each once (summing every event's self time would count a kernel
    # again under the op that launched it: 2-4x too much).
    kinds = summarize(table, a.active) if torch.cuda.is_available() else {}
    busy_ms = sum(kinds.values())
    wall_ms = 1000.0 * (stamps[last - 1] - stamps[last - 1 - a.active]) / a.active
    print(f"profile_per_step steps:{a.active} gpu_busy_ms:{busy_ms:.1f} wall_ms:{wall_ms:.1f} "
          f"busy_fraction:{busy_ms / wall_ms:.2f} (wall under the profiler: compare busy with an unprofiled step)")
    if a.out:
        Path(a.out).write_text(table)
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"profile_kind kind:{kind.replace(' ', '_')} gpu_ms_per_step:{ms:.1f}")
    if a.trace and torch.cuda.is_available():
        trace_gaps([a.trace, "--steps", str(a.active)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
