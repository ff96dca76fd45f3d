"""tools/power_summary.py: nvidia-smi's samples parsed (with or without units, header and "[N/A]" rows skipped),
each run summarised over its loaded samples only, and bad input refused with a message naming the file."""

from __future__ import annotations

import datetime as dt

from tools import power_summary as ps

T0 = dt.datetime(2026, 12, 4, 14, 0, 0, tzinfo=dt.timezone.utc)


def row(sec: float, sm: int, power: float, reasons: int, units: bool = False) -> str:
    stamp = (T0 + dt.timedelta(seconds=sec)).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
    if units:
        return f"{stamp}, {sm} MHz, {power:.2f} W, 700.00 W, 48, 0x{reasons:016x}"
    return f"{stamp}, {sm}, {power:.2f}, 700.00, 48, 0x{reasons:016x}"


def session() -> list[str]:
    """Run a (t 0-10 s): compile at 1980 MHz and 150 W, then 5 s of steps at the cap; run b (t 20-30 s): steps at
    1900 MHz, 600 W, no reason, one thermal sample."""
    lines = ["timestamp, clocks.current.sm [MHz], power.draw [W], power.limit [W], temperature.gpu, reasons"]
    lines += [row(0.1 * i, 1980, 150.0, 0, units=True) for i in range(50)]
    lines += [row(5 + 0.1 * i, 1700 + (i % 2) * 100, 690.0, 0x4, units=True) for i in range(50)]
    lines += [row(20 + 0.1 * i, 1900, 600.0, 0x40 if i == 0 else 0) for i in range(100)]
    lines.append(f"{(T0 + dt.timedelta(seconds=25)).strftime('%Y/%m/%d %H:%M:%S.%f')}, [N/A], [N/A], 700, 48, 0x0")
    return lines


def test_each_run_is_summarised_over_its_loaded_samples():
    samples = ps.parse_samples(session())
    assert len(samples) == 200  # the header and the [N/A] row skipped
    start = T0.timestamp()
    a = ps.summarize(samples, start, start + 10)
    assert a["samples"] == 50 and a["sm_mhz_mean"] == 1750 and a["sm_mhz_min"] == 1700  # compile samples left out
    assert a["power_w_mean"] == 690 and a["sw_power_cap"] == 1.0 and a["thermal"] == 0.0
    b = ps.summarize(samples, start + 20, start + 30)
    assert b["samples"] == 100 and b["sm_mhz_mean"] == 1900 and b["sw_power_cap"] == 0.0 and b["thermal"] == 0.01
    assert ps.summarize(samples, start + 40, start + 50) is None
    line = ps.power_line(("v32", "hybrid", 32768, 1, 0, 0), a)
    assert line.startswith("power label:v32 model:hybrid seq_len:32768 rep:1 samples:50 sm_mhz_mean:1750 ")
    assert "power_limit_w:700" in line and line.endswith("sw_power_cap:1.00 hw_slowdown:0.00 thermal:0.00")
    assert ps.power_line(("v30", "hybrid", 32768, 2, 0, 0), None).endswith("rep:2 samples:0")


def test_main_prints_a_line_per_run_and_refuses_bad_input(tmp_path, capsys):
    csv, runs = tmp_path / "power.csv", tmp_path / "runs.txt"
    csv.write_text("\n".join(session()) + "\n")
    s = T0.timestamp()
    runs.write_text(f"a hybrid 8192 1 {s} {s + 10}\nb baseline 16384 1 {s + 20} {s + 30}\n")
    assert ps.main([str(csv), str(runs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln.split()[1] for ln in out] == ["label:a", "label:b"] and "sm_mhz_mean:1750" in out[0]
    assert ps.main([str(csv), str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: cannot read" in capsys.readouterr().err
    runs.write_text("a hybrid 8192 1 start end\n")
    assert ps.main([str(csv), str(runs)]) == 2
    assert "runs line 1: 'a hybrid 8192 1 start end', expected LABEL MODEL SEQ REP START END" in capsys.readouterr().err
    runs.write_text(f"a hybrid 8192 1 {s} {s + 10}\n")
    csv.write_text("nvidia-smi: Field \"clocks_event_reasons.active\" is not a valid field to query.\n")
    assert ps.main([str(csv), str(runs)]) == 2
    assert "power.csv: no nvidia-smi samples" in capsys.readouterr().err
    assert ps.main([str(csv), str(runs), "--load", "0"]) == 2
    assert "--load 0.0: expected a fraction in (0, 1]" in capsys.readouterr().err
