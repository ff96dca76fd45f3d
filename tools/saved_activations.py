"""What a training script's model keeps for the backward pass: the bytes of every tensor saved by one forward
(compiled as training runs it, or eager), per token, and the largest groups by dtype and shape. Activations saved
for backward are most of a training step's peak memory, so this compares memory choices (e.g.
COMPILE_MEMORY_BUDGET) without a GPU: on the CPU with bf16 autocast and a bf16 embedding, as on CUDA.

    python3 tools/saved_activations.py [--script train_gpt] [--batch 2] [--seq-len 1024] [--budgets 1,0.7] [--eager]

On the CPU the attention kernel and (for the hybrid) the GDN path differ from the GPU's (FLA custom op there, our
chunked rule here), so compare budgets with each other, not these bytes with a GPU's peak.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import sys
from pathlib import Path

import torch
import torch._functorch.config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def saved_bytes(script: str, batch: int, seq_len: int, budget: float | None, top: int = 0) -> tuple[int, list[str]]:
    """Bytes of distinct storages saved for backward by one forward; budget None = eager (no compile)."""
    mod = importlib.import_module(script)
    args = mod.Hyperparameters()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if hasattr(mod, "prepare_mixers"):
        mod.prepare_mixers(args, dev)
    mod.configure_attention(args, dev)
    torch.manual_seed(0)
    model = mod.GPT(args).to(dev)
    model.tok_emb.to(torch.bfloat16)  # as training does on CUDA
    if budget is not None:
        torch._dynamo.reset()
        model = torch.compile(model, dynamic=False)
    x = torch.randint(0, args.vocab_size, (batch, seq_len), device=dev)
    y = torch.randint(0, args.vocab_size, (batch, seq_len), device=dev)
    storages: dict[int, int] = {}
    groups: collections.Counter = collections.Counter()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in storages:
            storages[key] = t.untyped_storage().nbytes()
            groups[(str(t.dtype).replace("torch.", ""), tuple(t.shape))] += t.untyped_storage().nbytes()
        return t

    patch = torch._functorch.config.patch(activation_memory_budget=budget) if budget is not None \
        else contextlib.nullcontext()
    with patch, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(dev.type, dtype=torch.bfloat16):
        model(x, y)
    lines = [f"  {n / 2**20:9.2f} MiB  {dt} {list(shape)}" for (dt, shape), n in groups.most_common(top)]
    return sum(storages.values()), lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--script", default="train_gpt", choices=("train_gpt", "train_gpt_gdn"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--budgets", default="1", help="comma-separated activation memory budgets in (0, 1]")
    p.add_argument("--eager", action="store_true", help="also the eager model")
    p.add_argument("--top", type=int, default=12, help="largest dtype/shape groups to list")
    a = p.parse_args(argv)
    if a.batch < 1 or a.seq_len < 1 or a.top < 0:
        p.error(f"--batch {a.batch} --seq-len {a.seq_len} --top {a.top}: expected positive sizes (--top >= 0)")
    try:
        budgets = [float(b) for b in a.budgets.split(",")]
    except ValueError:
        p.error(f"--budgets {a.budgets!r}: expected comma-separated numbers in (0, 1]")
    if not all(0 < b <= 1 for b in budgets):
        p.error(f"--budgets {a.budgets!r}: expected numbers in (0, 1]")
    tokens = a.batch * a.seq_len
    for budget in ([None] if a.eager else []) + budgets:
        total, lines = saved_bytes(a.script, a.batch, a.seq_len, budget, a.top)
        what = "eager" if budget is None else f"compiled budget:{budget:g}"
        print(f"saved {a.script} {what} tokens:{tokens} saved_mib:{total / 2**20:.1f} "
              f"bytes_per_token:{total / tokens:.0f}")
        if lines:
            print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
