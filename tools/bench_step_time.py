"""Step-time benchmark: runs each training script's real training step (the script itself, as a subprocess:
same code path as training) for a few steps after its own warm-up, on generated tokens, and reports per
(model, seq len): ms/step at the study's batch size, tokens/s, model FLOPs utilisation against a stated peak,
peak memory, the attention and GDN implementations used, whether CUDA graphs and STEP_OVERLAP ran, and the share
of the step the CPU spent enqueueing work (cpu_fraction, from tools/step_timing.py, which runs the script: near 1
means the step waits on its launches; with STEP_OVERLAP on, the default on one GPU, it reads ~1 whatever binds the
step), the first step's seconds (first_step_s: compilation, kernel JIT and autotuning, outside the training
timer), and a digest of the run's Triton autotune picks (picks:, from its autotune_picks line;
tools/compare_picks.py lists the kernels behind two digests that differ). Writes a log of probe lines (one per
result, read by tools/summarize_logs.py too) and a crossover plot under --out-dir.

    python3 tools/bench_step_time.py [--models baseline,hybrid] [--seq-lens 8192,16384,32768] [--steps 12]

Batch size: the SPEC presets (393216 tokens at 8k/16k and below, 524288 above 16k). MFU counts the matmul
FLOPs of the model (6 x matrix parameters x tokens, causal attention 6 x T x width per token and attention layer,
the chunked gated delta rule's matmuls per GDN layer) against --peak-tflops (default 989: the H100/H200 SXM dense
bf16 datasheet figure).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.checks import positive_ints  # noqa: E402
from tools.compare_picks import last_picks, picks_digest  # noqa: E402
from tools.log_parser import parse_file  # noqa: E402

SCRIPTS = {"baseline": "train_gpt.py", "hybrid": "train_gpt_gdn.py"}


BATCH_OVERRIDE = 0  # --batch-tokens (for small smoke runs); 0 = the study's presets


def fla_missing_for_hybrid(models: list[str]) -> str | None:
    """Why not to time the hybrid here, or None: on a CUDA host without an importable fla-core the script would
    run our PyTorch GDN form (tens of times slower than FLA's kernels), a number no step-time comparison wants.
    GDN_IMPL=torch in the environment asks for that form on purpose."""
    if "hybrid" not in models or os.environ.get("GDN_IMPL", "auto").strip().lower() == "torch":
        return None
    import torch
    if not torch.cuda.is_available():
        return None
    try:
        import fla  # noqa: F401
    except Exception as e:  # missing, or a broken install
        return (f"the hybrid on this CUDA host would run our PyTorch GDN form: fla-core is not importable "
                f"({type(e).__name__}: {e}; on the GPU host: source .gpuwheels/install.sh in the same shell "
                "first); set GDN_IMPL=torch to time that form")
    return None


def batch_tokens_for(seq_len: int) -> int:
    if BATCH_OVERRIDE:
        return BATCH_OVERRIDE
    return 393216 if seq_len <= 16384 else 524288


def model_flops_per_token(model: str, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward), matmuls only, default shapes."""
    vocab, layers = 1024, 9
    if model == "baseline":
        dim, attn_layers, gdn_layers = 512, 9, 0
    else:
        dim, attn_layers, gdn_layers = 448, 2, 7
    kv = dim // 2
    attn_params = dim * dim * 2 + dim * kv * 2
    mlp_params = 2 * dim * 2 * dim
    H, dk, dv, C = 8, round(dim / 8 * 0.75), round(round(dim / 8 * 0.75) * 2.0), 64
    gdn_params = dim * H * dk * 2 + dim * H * dv * 2 + dim * H * 2 + H * dv * dim
    matrix = layers * mlp_params + attn_layers * attn_params + gdn_layers * gdn_params + vocab * dim  # + head
    fwd = 2 * matrix
    fwd += attn_layers * 2 * seq_len * dim  # causal QK^T and PV: 4 T dim per token, halved by the mask
    # chunked GDN per token and head: K K^T, Q K^T (C dk each), P U (C dv), W S / Q S / K^T U (3 dk dv)
    fwd += gdn_layers * H * 2 * (2 * C * dk + C * dv + 3 * dk * dv)
    return 3.0 * fwd


def gdn_path(gdn_line: str) -> str:
    """The GDN implementation a run logged (its `gdn_impl:` line): torch, fla-op (FLA's GDN as our custom op: one
    compiled graph) or fla-public (FLA's public op: graph breaks), plus +conv-op where the conv ran as our
    custom op (v3: FLA's conv kernels; v4 on: our Triton kernels), +saved-state with GDN_SAVE_STATE, +saved-wv
    with GDN_SAVE_WV (v18), +state-chain with GDN_STATE_CHAIN=1 (v22; +state-chain-bwd with bwd), +segN with
    our chains in segments of N chunks (GDN_CHAIN_SEGMENT, v27), +wy with our WY backward (GDN_WY_BWD=1, v28),
    +dqkwg with our dq/dk/dw/dg kernel (GDN_DQKWG=1, v29), +fwd-o with our output kernel (GDN_FWD_O, v30) and
    +fla-disk-picks where FLA's autotune picks came from Triton's disk cache (FLA_CACHE_RESULTS=1; before v24 every
    run's, unlogged), so possibly from another shape."""
    if not gdn_line:
        return "-"
    gdn = gdn_line.split(":", 1)[1].split()[0]
    if gdn == "fla":
        gdn += "-op" if "as one torch custom op" in gdn_line else "-public"
        gdn += "+conv-op" if re.search(r"conv: .* as a torch custom op", gdn_line) else ""
        gdn += "+saved-state" if "chunk states saved for the backward" in gdn_line else ""
        gdn += "+saved-wv" if "w and v_new saved too" in gdn_line else ""
        gdn += "+state-chain" if "our chain kernels (GDN_STATE_CHAIN=1)" in gdn_line else ""
        gdn += "+state-chain-bwd" if "our chain kernels (GDN_STATE_CHAIN=bwd)" in gdn_line else ""
        gdn += f"+seg{m.group(1)}" if (m := re.search(r"in segments of (\d+) chunks", gdn_line)) else ""
        gdn += "+wy" if "WY backward: our kernel (GDN_WY_BWD=" in gdn_line else ""
        gdn += "+dqkwg" if "dq/dk/dw/dg backward: our kernel (GDN_DQKWG=" in gdn_line else ""
        gdn += "+fwd-o" if "output: our kernel (GDN_FWD_O=" in gdn_line else ""
        gdn += "+fla-disk-picks" if "FLA autotune picks from Triton's disk cache" in gdn_line else ""
    return gdn


def line_field(lines: list[str], prefix: str, key: str) -> str:
    """The value of ` key:value` in the first line starting with prefix, or "-"."""
    for ln in lines:
        if ln.startswith(prefix) and (m := re.search(rf"(?:^|\s){key}:(\S+)", ln)):
            return m.group(1)
    return "-"


def run_one(model: str, seq_len: int, a: argparse.Namespace, work: Path) -> dict:
    run_id = f"bench_{model}_seq{seq_len}_{int(time.time())}"
    env = dict(os.environ, DATA_PATH=a.data, TOKENIZER_PATH=a.tokenizer, RUN_ID=run_id,
               TRAIN_SEQ_LEN=str(seq_len), TRAIN_BATCH_TOKENS=str(batch_tokens_for(seq_len)),
               ITERATIONS=str(a.steps), WARMUP_STEPS=str(a.warmup), TRAIN_LOG_EVERY="1", VAL_LOSS_EVERY="0",
               VAL_MAX_TOKENS=str(seq_len), MAX_WALLCLOCK_SECONDS="0", OUTPUT_DIR=str(work / run_id),
               PYTHONUNBUFFERED="1")
    if a.attn_backend:
        env["ATTN_BACKEND"] = a.attn_backend
    # Through tools/step_timing.py (the script's own main(), unchanged): it also says how much of each step the
    # CPU spent enqueueing (cpu_fraction near 1: the step waits on its launches), over the same steps as ms/step.
    proc = subprocess.run([sys.executable, str(ROOT / "tools/step_timing.py"),
                           str(Path(a.script_dir) / SCRIPTS[model]), "--skip", str(a.warmup + 2)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=a.timeout)
    log = work / "logs" / f"{run_id}.txt"
    if proc.returncode != 0 or not log.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{model} seq {seq_len}: exit {proc.returncode}: {' | '.join(tail)}")
    run = parse_file(log).runs[-1]
    times = [p.train_time_ms for p in run.train]
    skip = min(2, len(times) - 2)  # the first steps after warm-up still settle
    ms = statistics.median([b - a_ for a_, b in zip(times[skip:], times[skip + 1:])])
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()
    attn = next((ln.split(":", 1)[1].replace(" ", ",") for ln in text
                 if ln.startswith(("attention:", "sdp_backends:"))), "-")
    gdn = gdn_path(next((ln for ln in text if ln.startswith("gdn_impl:")), ""))
    graphs = line_field(text, "device:", "cuda_graphs")  # "-": a script from before CUDA_GRAPHS
    overlap = line_field(text, "device:", "step_overlap")  # "-": a script from before STEP_OVERLAP
    cpu_fraction = line_field(proc.stdout.splitlines(), "step_timing ", "cpu_fraction")
    first_ms = line_field(proc.stdout.splitlines(), "step_timing ", "first_step_ms")  # compile, JIT, autotune
    first_s = f"{float(first_ms) / 1000:.1f}" if first_ms != "-" else "-"
    picks = last_picks(text)  # runs of one code can pick differently: the digest tells them apart
    tokens = batch_tokens_for(seq_len)
    tok_s = tokens / (ms / 1000.0)
    return dict(model=model, seq_len=seq_len, batch_tokens=tokens, ms=ms, tok_s=tok_s,
                mfu=tok_s * model_flops_per_token(model, seq_len) / (a.peak_tflops * 1e12),
                peak=run.peak_alloc_mib or 0, card=(run.card or "unknown").replace(" ", "_"),
                torch=run.torch or "unknown", attn=attn, gdn=gdn, graphs=graphs, overlap=overlap,
                cpu_fraction=cpu_fraction, first_step_s=first_s, picks=picks_digest(picks) if picks else "-",
                label=a.label)


def probe_line(r: dict) -> str:
    return (f"probe model:{r['model']} seq_len:{r['seq_len']} batch_tokens:{r['batch_tokens']} "
            f"ms_per_step:{r['ms']:.1f} tokens_per_s:{r['tok_s']:.0f} mfu:{r['mfu']:.3f} "
            f"peak_mem_mib:{r['peak']} card:{r['card']} torch:{r['torch']} attn:{r['attn']} gdn:{r['gdn']}"
            f" cuda_graphs:{r.get('graphs', '-')} step_overlap:{r.get('overlap', '-')}"
            f" cpu_fraction:{r.get('cpu_fraction', '-')} first_step_s:{r.get('first_step_s', '-')}"
            f" picks:{r.get('picks', '-')}"
            + (f" version:{r['label']}" if r.get("label") else ""))


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for model, label in sorted({(r["model"], r.get("label", "")) for r in results}):
        pts = sorted((r["seq_len"], r["ms"]) for r in results if r["model"] == model and r.get("label", "") == label)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{model} {label}".strip())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("ms per training step")
    ax.set_title(f"Step time vs context ({results[0]['card']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_from(logs: list[str], out_dir: Path) -> int:
    latest: dict[tuple[str, str, int], dict] = {}  # a later probe of the same model/version/length wins
    for path in logs:
        if not Path(path).is_file():
            print(f"error: --plot-from {path}: no such file", file=sys.stderr)
            return 2
        for pr in parse_file(path).probes:
            latest[(pr.model, pr.version, pr.seq_len)] = dict(model=pr.model, seq_len=pr.seq_len, ms=pr.ms_per_step,
                                                              card=pr.card or "unknown", label=pr.version)
    results = list(latest.values())
    if not results:
        print(f"error: --plot-from: no probe lines in {', '.join(logs)}", file=sys.stderr)
        return 1
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench_step_time_{time.strftime('%Y%m%d_%H%M%S')}.png"
    plot(results, path)
    print(f"plot: {path} ({len(results)} probes)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="baseline,hybrid")
    p.add_argument("--seq-lens", default="8192,16384,32768")
    p.add_argument("--steps", type=int, default=12, help="measured steps (after the script's warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="WARMUP_STEPS passed to the script")
    p.add_argument("--attn-backend", default="", help="ATTN_BACKEND for the scripts (default: the script's)")
    p.add_argument("--data", default="data/datasets/synthetic_sp1024", help="dataset folder (generated if absent)")
    p.add_argument("--tokenizer", default="data/tokenizers/fineweb_1024_bpe.model")
    p.add_argument("--batch-tokens", type=int, default=0, help="override the presets (smoke runs on CPU)")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--out-dir", default="logs_experiment")
    p.add_argument("--timeout", type=int, default=900, help="seconds per run")
    p.add_argument("--script-dir", default=str(ROOT), help="folder holding the two scripts (e.g. an older version)")
    p.add_argument("--label", default="", help="version label added to each probe line (version:<label>)")
    p.add_argument("--plot-from", nargs="+", metavar="LOG", help="only redraw the crossover plot from the probe "
                   "lines of these logs (one line per model and version) into --out-dir; runs nothing")
    a = p.parse_args(argv)
    if a.plot_from:
        return plot_from(a.plot_from, Path(a.out_dir))
    models = [m for m in a.models.split(",") if m]
    bad = [m for m in models if m not in SCRIPTS]
    if bad:
        p.error(f"--models: unknown {bad}, expected baseline and/or hybrid")
    seq_lens = positive_ints(p, "--seq-lens", a.seq_lens)
    why = fla_missing_for_hybrid(models)
    if why:
        p.error(f"--models {a.models}: {why}")
    if a.steps < 4:
        p.error("--steps: expected at least 4")
    global BATCH_OVERRIDE
    BATCH_OVERRIDE = a.batch_tokens
    a.data, a.tokenizer = str(Path(a.data).resolve()), str(Path(a.tokenizer).resolve())
    a.script_dir = str(Path(a.script_dir).resolve())
    missing = [SCRIPTS[m] for m in models if not (Path(a.script_dir) / SCRIPTS[m]).is_file()]
    if missing:
        p.error(f"--script-dir {a.script_dir}: no {', '.join(missing)}")
    if not Path(a.tokenizer).is_file():
        p.error(f"--tokenizer {a.tokenizer}: no such file")
    if not list(Path(a.data).glob("*_train_*.bin")):
        subprocess.run([sys.executable, str(ROOT / "data/make_synthetic_dataset.py"), "--out", a.data,
                        "--train-tokens", "40000000", "--val-tokens", "2000000"], check=True)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    log_path = out / f"bench_step_time_{stamp}.txt"
    work = Path(os.environ.get("BENCH_WORKDIR", "/tmp/bench_step_time"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"bench_step_time {stamp} models:{a.models} seq_lens:{a.seq_lens} steps:{a.steps} "
                  f"warmup:{a.warmup} attn_backend:{a.attn_backend or 'script default'} data:{a.data} "
                  f"peak_tflops:{a.peak_tflops} script_dir:{a.script_dir} label:{a.label or '-'}\n")
        for model in models:
            for seq in seq_lens:
                try:
                    r = run_one(model, seq, a, work)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    msg = f"probe_failed model:{model} seq_len:{seq} reason:{e}"
                    print(msg, flush=True)
                    log.write(msg + "\n")
                    log.flush()
                    continue
                results.append(r)
                print(probe_line(r), flush=True)
                log.write(probe_line(r) + "\n")
                log.flush()
    if results:
        plot(results, out / f"bench_step_time_{stamp}.png")
    print("\n| model | seq len | ms/step | tokens/s | MFU | peak MiB | attention | gdn | graphs | CPU share |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['seq_len']} | {r['ms']:.1f} | {r['tok_s']:.0f} | {r['mfu']:.3f} | {r['peak']} "
              f"| {r['attn']} | {r['gdn']} | {r['graphs']} | {r['cpu_fraction']} |")
    print(f"log: {log_path}")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
