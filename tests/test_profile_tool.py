"""tools/profile_script.py: records only the requested training steps of a real (tiny, CPU) run of a script and
says so when the run is too short for them."""

import os
import subprocess
import sys

from conftest import REPO, TOKENIZER, needs_tokenizer


def run_profile(tmp_path, iterations, extra):
    data = tmp_path / "data"
    if not data.is_dir():
        subprocess.run([sys.executable, str(REPO / "data/make_synthetic_dataset.py"), "--out", str(data),
                        "--train-tokens", "100000", "--val-tokens", "10000"], check=True, capture_output=True)
    env = dict(os.environ, DATA_PATH=str(data), TOKENIZER_PATH=str(TOKENIZER), MODEL_DIM="64", NUM_HEADS="4",
               NUM_KV_HEADS="2", TRAIN_SEQ_LEN="128", TRAIN_BATCH_TOKENS="2048", ITERATIONS=str(iterations),
               WARMUP_STEPS="1", VAL_MAX_TOKENS="1024", OUTPUT_DIR=str(tmp_path / "out"), RUN_ID="prof",
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / "tools/profile_script.py"), str(REPO / "train_gpt.py"),
                           *extra], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


@needs_tokenizer
def test_profile_records_the_requested_steps(tmp_path):
    r = run_profile(tmp_path, 4, ["--skip", "2", "--active", "2", "--top", "5"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ProfilerStep*" in r.stdout and "profile_per_step steps:2 " in r.stdout
    # Too short a run for the recording: a clear error, not an empty table.
    r = run_profile(tmp_path, 2, ["--skip", "2", "--active", "2"])
    assert r.returncode == 1 and "raise ITERATIONS" in r.stderr
