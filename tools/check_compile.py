"""GPU check: each training script's whole model under torch.compile with bf16 autocast (as training runs it)
against the same model eager with bf16 autocast, both scored against an fp32 reference (no autocast; the
hybrid's GDN layers on our fp32 chunked rule; SDPA math/efficient kernels), on one batch of fresh random tokens:
the loss and the gradient of every parameter. Every weight is drawn at random first (the zero-initialised
projections would hide the gradients upstream). For the hybrid, the GDN path is the one training resolves (FLA
as a custom op on CUDA when fla-core imports).

Criterion, per tensor: err(compiled, fp32) <= 1.5 err(eager, fp32) + 2e-3, with err = ||x - ref|| / ||ref||
averaged over the seeds given (each seed draws its own weights and tokens): the compiled model must be as close
to the exact math as eager bf16 training is. One seed is a noisy sample for the small, ill-conditioned decay
gradients (A_log, dt_bias): their bf16 error is 1-3e-2 on either path and changes ~2x between seeds and code
versions, so the default averages three. (Compiled against eager directly differs by up to ~7e-2 on a few
small-gradient tensors, e.g. A_log and the q/k weights of deep GDN layers, on CPU too without FLA: rounding to
bf16 at other points, not a different computation.)

    python3 tools/check_compile.py [--seq-len 2048] [--batch 4] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import sys
from pathlib import Path

import torch
import torch._functorch.config  # activation_memory_budget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.checks import rel  # noqa: E402
SLACK_MUL, SLACK_ADD = 1.5, 2e-3


def check(script: str, seq_len: int, batch: int, dev: torch.device, cpu_bf16: bool = False,
          seed: int = 0) -> list[tuple[str, str, float, float, float]]:
    """(script, tensor, err compiled, err eager, limit) of the loss and each parameter gradient, for one seed."""
    mod = importlib.import_module(script)
    args = mod.Hyperparameters()
    lines = mod.prepare_mixers(args, dev) if hasattr(mod, "prepare_mixers") else []
    lines.append(mod.configure_attention(args, dev))
    print(f"{script}: " + " | ".join(lines))
    torch.manual_seed(seed)
    eager = mod.GPT(args).to(dev)
    if dev.type == "cuda":
        eager.tok_emb.to(torch.bfloat16)
    with torch.no_grad():
        for p in eager.parameters():
            if p.ndim == 2 and p.count_nonzero() == 0:
                p.normal_(0, 0.02)
    reference = copy.deepcopy(eager).float()
    for m in reference.modules():
        if hasattr(m, "impl"):
            m.impl = "torch"  # the GDN layers' fp32 chunked rule
    compiled = torch.compile(copy.deepcopy(eager), dynamic=False)  # under the script's COMPILE_MEMORY_BUDGET
    x = torch.randint(0, args.vocab_size, (batch, seq_len), device=dev)
    y = torch.randint(0, args.vocab_size, (batch, seq_len), device=dev)
    out = {}
    for name, model in (("fp32", reference), ("eager", eager), ("compiled", compiled)):
        if name == "fp32":
            from torch.nn.attention import SDPBackend, sdpa_kernel
            ctx = sdpa_kernel([SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION]) if dev.type == "cuda" else \
                contextlib.nullcontext()
            with ctx:
                loss = model(x, y)
        else:
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if cpu_bf16 else mod.autocast_ctx(dev)
            with ctx, torch._functorch.config.patch(activation_memory_budget=args.compile_memory_budget):
                loss = model(x, y)
        loss.backward()
        base = getattr(model, "_orig_mod", model)
        out[name] = {"loss": loss.detach().float().reshape(1)}
        out[name].update({f"d{n}": p.grad.float() for n, p in base.named_parameters()})
    rows = []
    for key, ref in out["fp32"].items():
        e_eager, e_comp = rel(out["eager"][key], ref), rel(out["compiled"][key], ref)
        rows.append((script, key, e_comp, e_eager, SLACK_MUL * e_eager + SLACK_ADD))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--scripts", default="train_gpt,train_gpt_gdn")
    p.add_argument("--cpu", action="store_true", help="fp32 on the CPU (a smoke test of this tool, not the check)")
    p.add_argument("--cpu-bf16", action="store_true", help="on the CPU with bf16 autocast as on a GPU (slow): "
                   "the rounding behaviour of compiled vs eager without FLA")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated; the criterion uses the mean error over them")
    a = p.parse_args()
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {a.seeds!r}: expected comma-separated whole numbers")
    scripts = [s for s in a.scripts.split(",") if s]
    if not scripts or set(scripts) - {"train_gpt", "train_gpt_gdn"}:
        p.error(f"--scripts {a.scripts!r}: expected train_gpt and/or train_gpt_gdn, comma-separated")
    if a.seq_len < 1 or a.batch < 1:
        p.error(f"--seq-len {a.seq_len} --batch {a.batch}: expected positive integers")
    a.cpu = a.cpu or a.cpu_bf16
    if not a.cpu and not torch.cuda.is_available():
        print("error: this check needs a CUDA GPU (or --cpu for a smoke test)", file=sys.stderr)
        return 2
    dev = torch.device("cpu" if a.cpu else "cuda")
    print(f"card:{torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'} torch:{torch.__version__} "
          f"seeds:{','.join(map(str, seeds))} (errors below: means over the seeds)")
    failed = total = 0
    for script in scripts:
        errs = {}  # tensor -> [(err compiled, err eager)] per seed
        for seed in seeds:
            for _, what, e_comp, e_eager, _ in check(script, a.seq_len, a.batch, dev, a.cpu_bf16, seed):
                errs.setdefault(what, []).append((e_comp, e_eager))
        for what, pairs in errs.items():
            e_comp, e_eager = (sum(col) / len(pairs) for col in zip(*pairs))
            tol = SLACK_MUL * e_eager + SLACK_ADD
            ok = e_comp <= tol
            failed += not ok
            total += 1
            per_seed = " ".join(f"{c:.1e}/{e:.1e}" for c, e in pairs) if len(pairs) > 1 else ""
            print(f"{'ok  ' if ok else 'FAIL'} {script:14s} {what:40s} compiled_vs_fp32={e_comp:.2e} "
                  f"eager_vs_fp32={e_eager:.2e} limit={tol:.2e}" + (f"  per seed (compiled/eager): {per_seed}"
                                                                    if per_seed else ""))
    print(f"compile_check: {total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
