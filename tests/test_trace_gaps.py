"""tools/trace_gaps.py: idle GPU gaps from a chrome trace, each attributed to the CPU launch that ended it."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from tools.trace_gaps import OpTree, analyse, busy_intervals  # noqa: E402


def ev(cat, name, ts, dur, tid=1, **args):
    return dict(ph="X", cat=cat, name=name, ts=ts, dur=dur, pid=1, tid=tid, args=args)


def trace():
    return [
        ev("user_annotation", "ProfilerStep#4", -500, 500),     # the profiler's warm-up step: no GPU work, not counted
        ev("user_annotation", "ProfilerStep#5", 0, 1000),
        ev("user_annotation", "## Call CompiledFxGraph abc ##", 10, 100),
        ev("cuda_runtime", "cudaGraphLaunch", 20, 5, correlation=1),
        ev("kernel", "k1", 30, 50, tid=7, correlation=1),
        ev("kernel", "k2", 85, 40, tid=7, correlation=1),       # 5 us after k1: waited inside the graph
        ev("cpu_op", "aten::mm", 190, 20),
        ev("cuda_runtime", "cudaLaunchKernel", 200, 3, correlation=3),
        ev("user_annotation", "Optimizer.step#Muon.step", 300, 100),
        ev("cpu_op", "aten::add_", 310, 20),
        ev("cuda_runtime", "cudaLaunchKernel", 315, 3, correlation=2),
        ev("kernel", "k3", 320, 10, tid=7, correlation=2),      # 195 us idle: launched after the GPU went idle
        ev("kernel", "k4", 340, 10, tid=8, correlation=3),      # 10 us idle: queued long before
        dict(ph="i", cat="instant", name="marker", ts=5),         # not a complete event: ignored
    ]


def test_busy_intervals_merge_overlaps():
    gpu = [dict(ts=0, dur=10), dict(ts=5, dur=10), dict(ts=20, dur=5), dict(ts=25, dur=5)]
    assert busy_intervals(gpu) == [(0, 15), (20, 30)]


def test_op_tree_finds_enclosing_ops():
    t = OpTree([e for e in trace() if e["cat"] in ("cpu_op", "user_annotation")])
    assert t.enclosing(1, 316) == ["ProfilerStep#5", "Optimizer.step#Muon.step", "aten::add_"]
    assert t.enclosing(1, 250) == ["ProfilerStep#5"]  # after aten::mm ended: its parent only
    assert t.enclosing(2, 316) == []


def test_gaps_attributed_to_their_launch():
    r = analyse([e for e in trace() if e.get("ph") == "X"], min_gap_us=1.0)
    assert r["busy_us"] == pytest.approx(110.0) and r["window_us"] == pytest.approx(320.0)
    gaps = {g["kernel"]: g for g in r["gaps"]}
    assert set(gaps) == {"k2", "k3", "k4"}
    assert gaps["k3"]["dur"] == pytest.approx(195.0) and gaps["k3"]["launch_bound"]
    assert gaps["k3"]["where"] == "Optimizer.step#Muon.step"
    assert not gaps["k2"]["launch_bound"] and gaps["k2"]["where"] == "## Call CompiledFxGraph abc ##"
    assert not gaps["k4"]["launch_bound"] and gaps["k4"]["where"] == "aten::mm"
    assert [g["kernel"] for g in analyse(trace(), min_gap_us=20.0)["gaps"]] == ["k3"]


def test_cli_summary_and_errors(tmp_path):
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": trace()}, f)
    r = subprocess.run([sys.executable, str(REPO / "tools/trace_gaps.py"), str(path), "--min-gap-us", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "trace_idle steps:1 " in r.stdout and "launch_bound_ms_per_step:0.2" in r.stdout
    assert "Optimizer.step#Muon.step" in r.stdout
    r = subprocess.run([sys.executable, str(REPO / "tools/trace_gaps.py"), str(path), "--min-gap-us", "1",
                        "--steps", "2"], capture_output=True, text=True)  # as profile_script passes its steps
    assert r.returncode == 0 and "trace_idle steps:2 " in r.stdout and "launch_bound_ms_per_step:0.1" in r.stdout
    r = subprocess.run([sys.executable, str(REPO / "tools/trace_gaps.py"), str(path), "--steps", "-1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--steps" in r.stderr
    cpu_only = tmp_path / "cpu.json"
    cpu_only.write_text(json.dumps({"traceEvents": [ev("cpu_op", "aten::mm", 0, 5)]}))
    r = subprocess.run([sys.executable, str(REPO / "tools/trace_gaps.py"), str(cpu_only)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no GPU events" in r.stderr and "cpu.json" in r.stderr
    r = subprocess.run([sys.executable, str(REPO / "tools/trace_gaps.py"), str(tmp_path / "none.json")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "none.json: no such file" in r.stderr


def test_cli_refuses_bad_options_and_broken_traces(tmp_path):
    good = tmp_path / "t.json"
    good.write_text(json.dumps({"traceEvents": trace()}))
    r = subprocess.run([sys.executable, str(REPO / "tools/trace_gaps.py"), str(good), "--top", "-1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--min-gap-us and --top must be >= 0" in r.stderr
    broken = tmp_path / "cut.json"
    broken.write_text(json.dumps({"traceEvents": trace()})[:200])  # a trace cut short (a killed export)
    r = subprocess.run([sys.executable, str(REPO / "tools/trace_gaps.py"), str(broken)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "cut.json" in r.stderr and "Traceback" not in r.stderr
