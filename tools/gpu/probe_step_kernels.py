"""Kernels of one whole training step, and where an aten op's calls come from. Runs a script version's model and
optimisers the way its training step does (compiled, bf16 autocast, 8 micro-steps, then the optimisers; its GradSum
where the version has one, else `.backward()` after zero_grad) with CUDA graphs off, profiles one step after three,
and prints the kernels per step by name and each distinct call of --op with its input shapes, profiler parents and
Python stack. Found this way (eleventh session): the baseline's 280 aten sums per step are the final sums of
inductor's mix-order reductions, and GradSum's step launches ~620 fewer kernels.

    python3 tools/gpu/probe_step_kernels.py [--script-dir .] [--script train_gpt] [--batch 6] [--seq-len 8192]
"""
import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.gpu.cuda_model import load_script_file, training_model_on_cuda  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--script-dir", default=str(Path(__file__).resolve().parents[2]))
    p.add_argument("--script", default="train_gpt", choices=("train_gpt", "train_gpt_gdn"))
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--op", default="aten::sum", help="profiler name of the CPU op to trace")
    a = p.parse_args()
    path = Path(a.script_dir) / f"{a.script}.py"
    if not path.is_file():
        p.error(f"--script-dir {a.script_dir}: expected a folder holding {a.script}.py")
    if a.batch < 1 or a.seq_len < 2:
        p.error(f"--batch {a.batch} --seq-len {a.seq_len}: expected a batch >= 1 and a sequence length >= 2")
    if not torch.cuda.is_available():
        sys.exit("probe_step_kernels: needs a CUDA device (the step's kernels differ on the CPU)")
    from torch.profiler import ProfilerActivity, profile
    mod = load_script_file(path, a.script)
    args, model = training_model_on_cuda(mod)
    dev = torch.device("cuda")
    compiled = torch.compile(model, dynamic=False)
    optimizers = mod.build_optimizers(model, args, fused=True)
    grad_sum = mod.GradSum(model.parameters()) if hasattr(mod, "GradSum") else None
    print(f"script {path} gradients: {'GradSum' if grad_sum else 'backward'} batch {a.batch} x {a.seq_len}")
    batches = [tuple(torch.randint(0, args.vocab_size, (a.batch, a.seq_len), device=dev) for _ in range(2))
               for _ in range(8)]

    def step():
        if grad_sum is None:
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(batches):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = compiled(x, y) / len(batches)
            if grad_sum is None:
                loss.backward()
            else:
                grad_sum.backward(loss, first=i == 0)
        for opt in optimizers:
            opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True, with_stack=True) as prof:
        step()
        torch.cuda.synchronize()
    kernels, calls = Counter(), Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.name[:90]] += 1
        elif e.name == a.op:
            chain, parent = [], e.cpu_parent
            while parent is not None and len(chain) < 6:
                chain.append(parent.name[:60])
                parent = parent.cpu_parent
            stack = [s for s in (e.stack or []) if "site-packages/torch/" not in s][:5]
            calls[(str(e.input_shapes)[:100], " < ".join(chain), " | ".join(stack)[:300])] += 1
    print(f"kernels per step: {sum(kernels.values())}")
    for name, n in kernels.most_common(25):
        print(f"  {n:5d} {name}")
    print(f"{a.op} per step: {sum(calls.values())}")
    for (shapes, parents, stack), n in calls.most_common(12):
        print(f"  {n:5d} shapes {shapes} parents {parents} stack {stack or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
