"""The GPU's SM clock, power and clock-event reasons during each timed run of a device session (issue 5): reads the
samples that tools/gpu/ab_session.sh takes with nvidia-smi every 100 ms (power.csv) and its list of runs with their
start and end times (runs.txt), and prints one line per run over its loaded samples (power at or above --load of
the run's highest: the training steps, not the compile before them nor the evaluation after).

    python3 tools/power_summary.py POWER_CSV RUNS_TXT [--load 0.8]

power.csv: `nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,power.limit,temperature.gpu,
clocks_event_reasons.active --format=csv,noheader,nounits` under TZ=UTC (older drivers name the last field
clocks_throttle_reasons.active; same values). runs.txt: `LABEL MODEL SEQ REP START END` per run, times in
seconds since the epoch. Output, per run:

    power label:L model:M seq_len:N rep:R samples:N sm_mhz_mean:x sm_mhz_min:N power_w_mean:x power_w_max:x
          power_limit_w:x temp_c_max:N sw_power_cap:x hw_slowdown:x thermal:x

the last three being the share of loaded samples with that reason active (NVML's bits: SW power cap 0x4; HW slowdown
0x8 with its power-brake 0x80; SW / HW thermal 0x20 / 0x40). Thirty-fifth session, one H200 (700 W limit): the
hybrid's timed steps at 8k, 16k and 32k ran at the power cap, the SM clock ~1.9 GHz at 8k / 16k and ~1.77 GHz at 32k
against 1.98 idle (PERF_NOTES, "Power"). Exit 2 where a file is missing or unreadable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

SW_POWER_CAP, HW_SLOWDOWN, HW_POWER_BRAKE, SW_THERMAL, HW_THERMAL = 0x4, 0x8, 0x80, 0x20, 0x40


def parse_samples(lines: list[str]) -> list[tuple[float, float, float, float, float, int]]:
    """[(epoch s, SM MHz, power W, power limit W, temperature C, reasons bitmask)] from nvidia-smi's CSV rows
    (a header, blank or malformed row, e.g. an "[N/A]" field, is skipped)."""
    out = []
    for ln in lines:
        parts = [p.strip() for p in ln.split(",")]
        if len(parts) != 6:
            continue
        try:
            t = dt.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=dt.timezone.utc).timestamp()
            sm, power, limit, temp = (float(p.split()[0]) for p in parts[1:5])  # with or without units
            reasons = int(parts[5], 16)
        except (ValueError, IndexError):
            continue
        out.append((t, sm, power, limit, temp, reasons))
    return out


def parse_runs(lines: list[str]) -> list[tuple[str, str, int, int, float, float]]:
    """[(label, model, seq, rep, start, end)] from runs.txt rows; a row of another shape raises ValueError."""
    runs = []
    for i, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        parts = ln.split()
        try:
            label, model, seq, rep, start, end = parts
            runs.append((label, model, int(seq), int(rep), float(start), float(end)))
        except ValueError:
            raise ValueError(f"runs line {i}: {ln.strip()!r}, expected LABEL MODEL SEQ REP START END") from None
    return runs


def summarize(samples, start: float, end: float, load: float = 0.8) -> dict | None:
    """The run's loaded samples (power >= load x its highest) summarised; None where it has no samples."""
    inside = [s for s in samples if start <= s[0] <= end]
    if not inside:
        return None
    top = max(s[2] for s in inside)
    loaded = [s for s in inside if s[2] >= load * top]
    n = len(loaded)
    share = lambda bits: sum(bool(s[5] & bits) for s in loaded) / n  # noqa: E731
    return {"samples": n, "sm_mhz_mean": sum(s[1] for s in loaded) / n, "sm_mhz_min": min(s[1] for s in loaded),
            "power_w_mean": sum(s[2] for s in loaded) / n, "power_w_max": top,
            "power_limit_w": max(s[3] for s in loaded), "temp_c_max": max(s[4] for s in loaded),
            "sw_power_cap": share(SW_POWER_CAP), "hw_slowdown": share(HW_SLOWDOWN | HW_POWER_BRAKE),
            "thermal": share(SW_THERMAL | HW_THERMAL)}


def power_line(run, s: dict | None) -> str:
    label, model, seq, rep, _, _ = run
    head = f"power label:{label} model:{model} seq_len:{seq} rep:{rep}"
    if s is None:
        return f"{head} samples:0"
    return (f"{head} samples:{s['samples']} sm_mhz_mean:{s['sm_mhz_mean']:.0f} sm_mhz_min:{s['sm_mhz_min']:.0f} "
            f"power_w_mean:{s['power_w_mean']:.0f} power_w_max:{s['power_w_max']:.0f} "
            f"power_limit_w:{s['power_limit_w']:.0f} temp_c_max:{s['temp_c_max']:.0f} "
            f"sw_power_cap:{s['sw_power_cap']:.2f} hw_slowdown:{s['hw_slowdown']:.2f} thermal:{s['thermal']:.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("power_csv")
    p.add_argument("runs_txt")
    p.add_argument("--load", type=float, default=0.8, help="loaded samples: power >= LOAD x the run's highest")
    a = p.parse_args(argv)
    if not 0 < a.load <= 1:
        print(f"--load {a.load}: expected a fraction in (0, 1]", file=sys.stderr)
        return 2
    texts = {}
    for name in (a.power_csv, a.runs_txt):
        try:
            texts[name] = Path(name).read_text().splitlines()
        except OSError as e:
            print(f"{name}: cannot read ({e.strerror})", file=sys.stderr)
            return 2
    try:
        runs = parse_runs(texts[a.runs_txt])
    except ValueError as e:
        print(f"{a.runs_txt}: {e}", file=sys.stderr)
        return 2
    samples = parse_samples(texts[a.power_csv])
    if not samples:
        print(f"{a.power_csv}: no nvidia-smi samples (expected rows of timestamp, clocks.sm, power.draw, power.limit, "
              "temperature.gpu, clocks_event_reasons.active)", file=sys.stderr)
        return 2
    for run in runs:
        print(power_line(run, summarize(samples, run[4], run[5], a.load)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
