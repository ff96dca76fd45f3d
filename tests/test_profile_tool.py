"""tools/profile_script.py: records only the requested training steps of a real (tiny, CPU) run of a script and
says so when the run is too short for them."""

import json
import os
import subprocess
import sys

from conftest import REPO, TOKENIZER, needs_tokenizer


def tiny_run_env(tmp_path, iterations, **extra):
    """A tiny CPU training run's environment, on generated data made once per test folder."""
    data = tmp_path / "data"
    if not data.is_dir():
        subprocess.run([sys.executable, str(REPO / "data/make_synthetic_dataset.py"), "--out", str(data),
                        "--train-tokens", "100000", "--val-tokens", "10000"], check=True, capture_output=True)
    return dict(os.environ, DATA_PATH=str(data), TOKENIZER_PATH=str(TOKENIZER), MODEL_DIM="64", NUM_HEADS="4",
                NUM_KV_HEADS="2", TRAIN_SEQ_LEN="128", TRAIN_BATCH_TOKENS="2048", ITERATIONS=str(iterations),
                WARMUP_STEPS="1", VAL_MAX_TOKENS="1024", OUTPUT_DIR=str(tmp_path / "out"), OMP_NUM_THREADS="1",
                **extra)


def run_profile(tmp_path, iterations, extra):
    env = tiny_run_env(tmp_path, iterations, RUN_ID="prof")
    return subprocess.run([sys.executable, str(REPO / "tools/profile_script.py"), str(REPO / "train_gpt.py"),
                           *extra], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


@needs_tokenizer
def test_profile_records_the_requested_steps(tmp_path):
    trace = tmp_path / "trace.json"
    r = run_profile(tmp_path, 4, ["--skip", "2", "--active", "2", "--top", "5", "--trace", str(trace)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ProfilerStep*" in r.stdout and "profile_per_step steps:2 " in r.stdout
    # The chrome trace of the recorded steps (tools/trace_gaps.py reads it; on the CPU there is no GPU to analyse).
    names = {e.get("name") for e in json.loads(trace.read_text())["traceEvents"]}
    assert {"ProfilerStep#3", "ProfilerStep#4"} <= names and "Optimizer.step#Muon.step" in names
    # Too short a run for the recording: a clear error, not an empty table.
    r = run_profile(tmp_path, 2, ["--skip", "2", "--active", "2"])
    assert r.returncode == 1 and "raise ITERATIONS" in r.stderr


@needs_tokenizer
def test_step_timing_reports_each_step(tmp_path):
    """tools/step_timing.py: one line per step after --skip, CPU enqueue time never above the step's wall time
    (on the CPU every op runs as it is launched, so the two are close), and a clear error when --skip leaves
    nothing."""
    env = tiny_run_env(tmp_path, 5, VAL_LOSS_EVERY="0", RUN_ID="timing")

    def run(skip):
        return subprocess.run([sys.executable, str(REPO / "tools/step_timing.py"), str(REPO / "train_gpt.py"),
                               "--skip", str(skip)], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=300)

    r = run(2)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [dict(kv.split(":") for kv in line.split()[1:]) for line in r.stdout.splitlines()
            if line.startswith("step_time ")]
    # 1 warm-up + 5 steps = 6 starts, 5 full intervals, 2 skipped.
    assert [int(row["step"]) for row in rows] == [3, 4, 5]
    for row in rows:
        assert 0 < float(row["cpu_ms"]) <= float(row["wall_ms"])
    summary = dict(kv.split(":") for kv in r.stdout.split("step_timing ")[1].split())
    assert summary["steps"] == "3" and float(summary["first_step_ms"]) > 0
    r = run(9)
    assert r.returncode == 1 and "lower --skip" in r.stderr


@needs_tokenizer
def test_step_timing_passes_on_the_scripts_config_errors(tmp_path):
    """Bad settings give the script's own one-line error and exit status 2 through the tool, not a traceback."""
    env = dict(os.environ, DATA_PATH=str(tmp_path), TOKENIZER_PATH=str(TOKENIZER), SEED="abc",
               OUTPUT_DIR=str(tmp_path / "out"), RUN_ID="timing_bad")
    r = subprocess.run([sys.executable, str(REPO / "tools/step_timing.py"), str(REPO / "train_gpt_gdn.py")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: SEED") and "Traceback" not in r.stderr
