"""Which launches of a whole training model's compiled graphs are not inductor's own Triton kernels (matmuls, SDPA,
custom ops, aten fallbacks), and which Triton kernels reduce? Compiles the baseline (or hybrid) model at one
micro-batch under bf16 autocast on CUDA, forward and backward, and prints each graph's launch count and those
launches: a kernel seen in a profile but absent here runs outside inductor's code (inside an extern op, the
autograd engine or the optimiser).

    python3 tools/gpu/probe_model_launches.py [--script train_gpt] [--batch 6] [--seq-len 8192]   # on a CUDA machine
"""
import argparse
import importlib
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.gpu.cuda_model import training_model_on_cuda  # noqa: E402
from tools.inductor_code import launch_name, launches  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--script", default="train_gpt", choices=("train_gpt", "train_gpt_gdn"))
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--seq-len", type=int, default=8192)
    a = p.parse_args()
    if a.batch < 1 or a.seq_len < 2:
        p.error(f"--batch {a.batch} --seq-len {a.seq_len}: expected a batch >= 1 and a sequence length >= 2")
    if not torch.cuda.is_available():
        sys.exit("probe_model_launches: needs a CUDA device (the generated code differs on the CPU)")
    from torch._inductor.utils import run_and_get_code
    mod = importlib.import_module(a.script)
    args, model = training_model_on_cuda(mod)
    dev = torch.device("cuda")
    x = torch.randint(0, args.vocab_size, (a.batch, a.seq_len), device=dev)
    y = torch.randint(0, args.vocab_size, (a.batch, a.seq_len), device=dev)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.compile(model, dynamic=False)(x, y)
        loss.backward()

    _, codes = run_and_get_code(step)
    for i, code in enumerate(codes):
        kinds = Counter(launch_name(s) for s in launches(code))
        print(f"== graph {i}: {sum(kinds.values())} launches")
        for k, n in kinds.most_common():
            if not k.startswith("triton_") or "sum" in k or "_red_" in k:
                print(n, k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
