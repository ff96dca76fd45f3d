"""PNG plots for tools/summarize_logs.py (matplotlib, Agg backend; imported only for --plots)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"baseline": "tab:blue", "hybrid": "tab:orange"}
STYLES = ["-", "--", ":", "-."]


def _label(run) -> str:
    seed = f"seed {run.seed}" if run.seed is not None else "seed ?"
    final = f", final {run.final_bpb:.4f}" if run.final_bpb is not None else ""
    return f"{run.model_kind} {seed}{final}"


def _curves(entries, seq_len: int, path: Path) -> None:
    """val_bpb against step and against training time, every counted or truncated run."""
    fig, (ax_step, ax_time) = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    shown = [e for e in entries if e.run.seq_len == seq_len and e.run.val
             and not e.role.startswith("superseded")]
    seen: dict[str, int] = {}
    ys = []
    for e in shown:
        r = e.run
        k = seen[r.model_kind] = seen.get(r.model_kind, -1) + 1
        color, style = COLORS.get(r.model_kind, "tab:gray"), STYLES[k % len(STYLES)]
        label = _label(r) + ("" if e.counted else " (truncated)")
        steps = [p.step for p in r.val]
        bpb = [p.val_bpb for p in r.val]
        minutes = [p.train_time_ms / 60000 for p in r.val]
        ax_step.plot(steps, bpb, style, color=color, marker=".", label=label)
        ax_time.plot(minutes, bpb, style, color=color, marker=".", label=label)
        if r.final_bpb is not None:  # the score: int8+zlib round trip after training
            ax_step.plot([r.steps], [r.final_bpb], "x", color=color, ms=9)
            ax_time.plot([r.train_time_ms / 60000], [r.final_bpb], "x", color=color, ms=9)
            ys.append(r.final_bpb)
        ys += [p.val_bpb for p in r.val if p.step > 0]
    if ys:  # step 0 (~4.1 bpb) would squash the part that matters
        lo = min(ys)
        ax_step.set_ylim(lo - 0.02, min(max(ys), lo + 0.8) + 0.02)
    ax_step.set_xlabel("training step")
    ax_time.set_xlabel("training time (min, excluding validation)")
    ax_step.set_ylabel("validation bits per byte (val_bpb)")
    for ax in (ax_step, ax_time):
        ax.grid(alpha=0.3)
    ax_step.legend(title="x = final int8+zlib round trip", fontsize=8)
    fig.suptitle(f"Validation bpb, seq len {seq_len}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _against_seq(groups, attr: str, ylabel: str, title: str, path: Path, digits: int) -> None:
    """Mean over counted runs per seq len, min–max as error bars, one line per model."""
    fig, ax = plt.subplots(figsize=(7, 5))
    seqs = set()
    for model in sorted({g.model for g in groups}):
        pts = [(g.seq_len, g.stat(attr)) for g in groups
               if g.model == model and g.seq_len and g.stat(attr)]
        if not pts:
            continue
        xs = [s for s, _ in pts]
        seqs.update(xs)
        means = [st.mean for _, st in pts]
        err = [[st.mean - st.lo for _, st in pts], [st.hi - st.mean for _, st in pts]]
        ax.errorbar(xs, means, yerr=err, marker="o", capsize=4, label=model,
                    color=COLORS.get(model, "tab:gray"))
        for x, y in zip(xs, means):
            ax.annotate(f"{y:.{digits}f}", (x, y), textcoords="offset points", xytext=(6, 6),
                        fontsize=8, color=COLORS.get(model, "tab:gray"),
                        bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    ax.set_xscale("log", base=2)
    ax.margins(x=0.12)  # room for the value labels at the ends
    ax.set_xticks(sorted(seqs), [str(s) for s in sorted(seqs)])
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(entries, groups, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for seq in sorted({e.run.seq_len for e in entries if e.run.seq_len and e.run.val}):
        path = out_dir / f"val_bpb_seq{seq}.png"
        _curves(entries, seq, path)
        written.append(path)
    if groups:
        path = out_dir / "ms_per_step_vs_seq_len.png"
        _against_seq(groups, "ms_overall", "ms per training step (final train_time / steps)",
                     "Step time vs context (crossover)", path, 1)
        written.append(path)
        path = out_dir / "final_bpb_vs_seq_len.png"
        _against_seq(groups, "final_bpb", "final val_bpb (int8+zlib round trip, lower is better)",
                     "Final score vs context (same wall-clock budget per run)", path, 4)
        written.append(path)
    return written
