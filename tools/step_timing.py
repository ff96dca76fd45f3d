"""Is a training step bound by the GPU or by the CPU that launches its work? Runs a training script (imported
as a module, its own main(): same code path as training, no profiler) and stamps, per training step, when the
step asks for its first micro-batch (the step starts), when its last optimiser has been launched (the CPU is
done enqueueing), and when the next step starts (the script's once-per-step sync has returned):

    ITERATIONS=12 WARMUP_STEPS=3 VAL_LOSS_EVERY=0 python3 tools/step_timing.py train_gpt_gdn.py --skip 5

prints one line per step and a summary line
`step_timing steps:N wall_ms:<median> cpu_ms:<median> cpu_fraction:<cpu/wall> first_step_ms:<ms>`
(first_step_ms: the first step's, warm-up or not: compilation, kernel JIT and autotuning, which the training timer
never counts; with STEP_OVERLAP up to when the second step's enqueueing starts): a cpu_fraction near 1 means the
GPU waits on the launches (fewer launches or CUDA graphs would pay); far below 1 means the step is GPU-bound.
The enqueue time includes any wait for room in CUDA's launch queue: a GPU-bound step whose work fills the queue
(CUDA graphs: the CPU runs far ahead) reads 0.75-0.9 too; a profile (tools/profile_script.py) tells them apart by
its "Command Buffer Full" row (CPU time blocked on a full queue). With STEP_OVERLAP=1 (the scripts' default on one
CUDA process) each step's micro-batches are asked for before the step before is waited on, so the CPU waits inside
every step and cpu_fraction reads ~1 whatever binds it: run with STEP_OVERLAP=0 to see the launch-bound share.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

from torch.optim.optimizer import register_optimizer_step_post_hook


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("script")
    p.add_argument("--skip", type=int, default=5, help="training steps (warm-up steps included) not reported")
    a = p.parse_args(argv)
    path = Path(a.script)
    if not path.is_file():
        p.error(f"script {a.script}: no such file")
    if a.skip < 0:
        p.error(f"--skip {a.skip}: expected >= 0")
    spec = importlib.util.spec_from_file_location("timed_training_script", path)
    mod = importlib.util.module_from_spec(spec)
    sys.argv = [str(path)]
    spec.loader.exec_module(mod)  # defines everything; main() runs below (the script guards it)
    if not hasattr(mod, "DistributedTokenLoader") or not hasattr(mod, "main"):
        p.error(f"script {a.script}: expected a training script with DistributedTokenLoader and main()")

    starts: list[float] = []  # first micro-batch request of each step
    launched: list[float] = []  # when the step's last optimiser step returned (no sync)
    next_batch = mod.DistributedTokenLoader.next_batch

    def timed_next_batch(self, *args, **kwargs):
        if len(starts) == len(launched):  # the previous step (if any) has stepped its optimisers: a new step
            starts.append(time.perf_counter())
        return next_batch(self, *args, **kwargs)

    def on_step(optimizer, args, kwargs) -> None:  # each optimiser of the step moves its `launched` stamp later
        now = time.perf_counter()
        if len(launched) == len(starts):
            launched[-1] = now
        elif starts:
            launched.append(now)

    mod.DistributedTokenLoader.next_batch = timed_next_batch
    handle = register_optimizer_step_post_hook(on_step)
    try:
        mod.main()
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    except Exception as e:
        if type(e).__name__ != "ConfigError" or not hasattr(mod, "fail"):
            raise
        mod.fail(str(e))  # the script's own one-line error and exit status, as when it runs on its own
    finally:
        handle.remove()
    # Step i spans starts[i] .. starts[i+1]; the last step has no successor. Warm-up steps count (the script
    # restores the initial state after them, the timing is the same code).
    n = min(len(starts) - 1, len(launched))
    rows = [(1000.0 * (starts[i + 1] - starts[i]), 1000.0 * (launched[i] - starts[i])) for i in range(a.skip, n)]
    if not rows:
        print(f"error: the run made {max(n, 0)} timed training steps, --skip {a.skip} leaves none: raise "
              "ITERATIONS or lower --skip", file=sys.stderr)
        return 1
    for i, (wall, cpu) in enumerate(rows):
        print(f"step_time step:{a.skip + i + 1} wall_ms:{wall:.1f} cpu_ms:{cpu:.1f}")
    wall, cpu = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
    first = 1000.0 * (starts[1] - starts[0])  # n >= 1 here: a second start exists
    print(f"step_timing steps:{len(rows)} wall_ms:{wall:.1f} cpu_ms:{cpu:.1f} cpu_fraction:{cpu / wall:.2f} "
          f"first_step_ms:{first:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
