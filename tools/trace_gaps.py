"""Where the GPU sits idle, from a torch.profiler chrome trace (tools/profile_script.py --trace): the GPU's busy
intervals (kernels, copies, memsets on any stream, merged), the idle gaps between them, and for each gap the work
that ended it: its launch call on the CPU (matched by the trace's correlation ids) and the CPU ops that enclosed
that launch. A gap ended by a launch issued after the gap began was waiting on the CPU ("launch-bound"); one ended
by work queued before it began was waiting on something else (a dependency inside a graph replay, an event).

    python3 tools/trace_gaps.py TRACE.json[.gz] [--min-gap-us 20] [--top 15] [--steps N]

Per-step figures divide by --steps (tools/profile_script.py passes its recorded steps), else by the trace's
ProfilerStep markers that overlap the GPU's busy window (the profiler's warm-up step has a marker but no GPU work).

Prints one `trace_idle` summary line (busy and idle ms per recorded step), the idle time grouped by the enclosing
CPU op of the launch that ended each gap, and the largest gaps.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path

GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
CPU_CATS = ("cpu_op", "user_annotation", "python_function")


def load_events(path: str | Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "ts" in e]


def busy_intervals(gpu: list[dict]) -> list[tuple[float, float]]:
    """Merged [start, end) intervals (us) in which some GPU work ran."""
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in gpu)
    merged: list[list[float]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


class OpTree:
    """The CPU ops of each thread as a nesting tree (ops on one thread nest or follow each other), so that the
    ops enclosing a time are found by one bisection and a walk up the parents."""

    def __init__(self, ops: list[dict]):
        self.by_tid: dict = {}
        for e in sorted(ops, key=lambda e: (float(e["ts"]), -float(e.get("dur", 0)))):
            starts, ends, names, parents, stack = self.by_tid.setdefault(e.get("tid"), ([], [], [], [], []))
            s, end = float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))
            while stack and ends[stack[-1]] <= s:  # ended before (or as) this one began: not a parent
                stack.pop()
            starts.append(s)
            ends.append(end)
            names.append(e["name"])
            parents.append(stack[-1] if stack else -1)
            stack.append(len(starts) - 1)

    def enclosing(self, tid, ts: float) -> list[str]:
        """Names of the ops on thread tid that enclose time ts, outermost first."""
        if tid not in self.by_tid:
            return []
        starts, ends, names, parents, _ = self.by_tid[tid]
        i = bisect.bisect_right(starts, ts) - 1
        while i >= 0 and ends[i] < ts:
            i = parents[i]
        out = []
        while i >= 0:
            out.append(names[i])
            i = parents[i]
        return out[::-1]


def label(names: list[str]) -> str:
    """The most telling enclosing op: the innermost compiled-graph call, optimiser or autograd marker if any,
    else the innermost op."""
    for n in reversed(names):
        if n.startswith(("## Call CompiledFxGraph", "Optimizer.", "autograd::engine", "CompiledFunction",
                         "torch-compiled region", "## ")):
            return n[:60]
    return names[-1][:60] if names else "(no enclosing CPU op)"


def analyse(events: list[dict], min_gap_us: float) -> dict:
    gpu = [e for e in events if e.get("cat") in GPU_CATS]
    if not gpu:
        raise ValueError("no GPU events (kernels, copies) in the trace: was it recorded on a GPU with CUDA activity?")
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    tree = OpTree([e for e in events if e.get("cat") in CPU_CATS])
    busy = busy_intervals(gpu)
    steps = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")
             and float(e["ts"]) < busy[-1][1] and float(e["ts"]) + float(e.get("dur", 0)) > busy[0][0]]
    by_start = sorted(gpu, key=lambda e: float(e["ts"]))
    gpu_starts = [float(e["ts"]) for e in by_start]
    gaps = []
    for (_, end), (nxt, _) in zip(busy, busy[1:]):
        if nxt - end < min_gap_us:
            continue
        first = by_start[bisect.bisect_left(gpu_starts, nxt)]  # the work that ended the gap
        launch = launches.get(first.get("args", {}).get("correlation"))
        names = tree.enclosing(launch.get("tid"), float(launch["ts"])) if launch else []
        gaps.append(dict(start=end, dur=nxt - end, kernel=first["name"], launch=launch["name"] if launch else "?",
                         launch_bound=bool(launch) and float(launch["ts"]) >= end, where=label(names)))
    window = (busy[0][0], busy[-1][1])
    return dict(busy_us=sum(e - s for s, e in busy), window_us=window[1] - window[0], gaps=gaps,
                steps=max(1, len(steps)), first_us=window[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace")
    p.add_argument("--min-gap-us", type=float, default=20.0, help="shorter idle gaps are counted, not listed")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--steps", type=int, default=0, help="recorded training steps (0: count the trace's markers)")
    a = p.parse_args(argv)
    if not Path(a.trace).is_file():
        p.error(f"trace {a.trace}: no such file")
    if a.min_gap_us < 0 or a.top < 0:
        p.error("--min-gap-us and --top must be >= 0")
    if a.steps < 0:
        p.error(f"--steps {a.steps}: expected >= 0 (0: count the trace's step markers)")
    try:
        r = analyse(load_events(a.trace), a.min_gap_us)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        p.error(f"trace {a.trace}: {e}")
    n = a.steps or r["steps"]
    idle_us = r["window_us"] - r["busy_us"]
    listed = sum(g["dur"] for g in r["gaps"])
    cpu_wait = sum(g["dur"] for g in r["gaps"] if g["launch_bound"])
    print(f"trace_idle steps:{n} window_ms_per_step:{r['window_us'] / n / 1e3:.1f} "
          f"busy_ms_per_step:{r['busy_us'] / n / 1e3:.1f} idle_ms_per_step:{idle_us / n / 1e3:.1f} "
          f"gaps_over_min_ms_per_step:{listed / n / 1e3:.1f} launch_bound_ms_per_step:{cpu_wait / n / 1e3:.1f}")
    groups: dict[tuple[str, bool], list[float]] = defaultdict(list)
    for g in r["gaps"]:
        groups[(g["where"], g["launch_bound"])].append(g["dur"])
    print("idle by the CPU op that launched the work ending each gap (ms per step, gaps, launch-bound?):")
    for (where, lb), durs in sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:a.top]:
        print(f"  {sum(durs) / n / 1e3:8.2f} ms  {len(durs):5d}  {'cpu' if lb else 'gpu'}  {where}")
    print("largest gaps (us, at ms from the first GPU work, next GPU work, its launch call, enclosing op):")
    for g in sorted(r["gaps"], key=lambda g: -g["dur"])[:a.top]:
        print(f"  {g['dur']:9.1f} us at {(g['start'] - r['first_us']) / 1e3:9.3f} ms  {g['kernel'][:50]}  "
              f"{g['launch']}  {'cpu' if g['launch_bound'] else 'gpu'}  {g['where']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
