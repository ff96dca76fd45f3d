"""GPU check: each training script's whole model under torch.compile (as training runs it) against the same model
eager, on one batch of fresh random tokens with bf16 autocast: the loss and the gradient of every parameter.
Every weight is drawn at random first (the zero-initialised projections would hide the gradients upstream).
For the hybrid, the GDN path is the one training resolves (FLA as a custom op on CUDA when fla-core imports).
Relative errors ||x - ref|| / ||ref||; exits 1 if one exceeds its tolerance (both sides round to bf16 at
different points: compile keeps fused intermediates in fp32).

    python3 tools/check_compile.py [--seq-len 2048] [--batch 4]
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
TOL_LOSS, TOL_GRAD = 5e-3, 3e-2


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return float("inf") if not torch.isfinite(x).all() else ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check(script: str, seq_len: int, batch: int, dev: torch.device) -> list[tuple[str, str, float, float]]:
    mod = importlib.import_module(script)
    args = mod.Hyperparameters()
    lines = mod.prepare_mixers(args, dev) if hasattr(mod, "prepare_mixers") else []
    lines.append(mod.configure_attention(args, dev))
    print(f"{script}: " + " | ".join(lines))
    torch.manual_seed(0)
    eager = mod.GPT(args).to(dev)
    if dev.type == "cuda":
        eager.tok_emb.to(torch.bfloat16)
    with torch.no_grad():
        for p in eager.parameters():
            if p.ndim == 2 and p.count_nonzero() == 0:
                p.normal_(0, 0.02)
    compiled = torch.compile(copy.deepcopy(eager), dynamic=False)
    x = torch.randint(0, args.vocab_size, (batch, seq_len), device=dev)
    y = torch.randint(0, args.vocab_size, (batch, seq_len), device=dev)
    out = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        with mod.autocast_ctx(dev):
            loss = model(x, y)
        loss.backward()
        base = getattr(model, "_orig_mod", model)
        out[name] = (loss.detach().float(), {n: p.grad.float() for n, p in base.named_parameters()})
    rows = [(script, "loss", rel(out["compiled"][0], out["eager"][0]), TOL_LOSS)]
    rows += [(script, f"d{n}", rel(out["compiled"][1][n], g), TOL_GRAD) for n, g in out["eager"][1].items()]
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--scripts", default="train_gpt,train_gpt_gdn")
    p.add_argument("--cpu", action="store_true", help="fp32 on the CPU (a smoke test of this tool, not the check)")
    a = p.parse_args()
    if not a.cpu and not torch.cuda.is_available():
        print("error: this check needs a CUDA GPU (or --cpu for a smoke test)", file=sys.stderr)
        return 2
    dev = torch.device("cpu" if a.cpu else "cuda")
    print(f"card:{torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'} torch:{torch.__version__}")
    failed = total = 0
    for script in a.scripts.split(","):
        for name, what, err, tol in check(script, a.seq_len, a.batch, dev):
            ok = err <= tol
            failed += not ok
            total += 1
            print(f"{'ok  ' if ok else 'FAIL'} {name:14s} {what:40s} rel_err={err:.2e} tol={tol:.0e}")
    print(f"compile_check: {total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
