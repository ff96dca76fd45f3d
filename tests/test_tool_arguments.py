"""The GPU tools refuse bad options with one line naming the option, exit 2, before any work (so on a CPU-only
machine too: the options are checked before the tools look for CUDA)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from tools.checks import positive_ints  # noqa: E402


def test_positive_ints():
    p = argparse.ArgumentParser(prog="t")
    assert positive_ints(p, "--seq-lens", "1024,8192") == [1024, 8192]
    assert positive_ints(p, "--seq-lens", "100,") == [100]
    for bad in ("", "abc", "8192,x", "0,4", "-1"):
        with pytest.raises(SystemExit):
            positive_ints(p, "--seq-lens", bad)


@pytest.mark.parametrize("tool,args,message", [
    ("check_gdn_fla.py", ["--seq-lens", "abc"], "--seq-lens 'abc': expected comma-separated positive integers"),
    ("check_gdn_fla.py", ["--batch", "0"], "--batch 0"),
    ("check_attention.py", ["--seq-lens", "0,1024"], "--seq-lens '0,1024'"),
    ("check_compile.py", ["--scripts", "train_gpt,nope"], "--scripts 'train_gpt,nope'"),
    ("check_compile.py", ["--seq-len", "0"], "--seq-len 0"),
    ("check_compile.py", ["--seeds", "0,x"], "--seeds '0,x'"),
    ("saved_activations.py", ["--budgets", "1,2"], "--budgets '1,2': expected numbers in (0, 1]"),
    ("saved_activations.py", ["--budgets", "x"], "--budgets 'x'"),
    ("saved_activations.py", ["--seq-len", "0"], "--seq-len 0"),
    ("bench_step_time.py", ["--seq-lens", "8k"], "--seq-lens '8k'"),
    ("step_timing.py", ["nope.py"], "script nope.py: no such file"),
    ("bench_conv_kernels.py", ["--old", ".", "--shapes", "6x8192"], "--shapes: '6x8192' is not BxTxD"),
    ("bench_conv_kernels.py", ["--old", "nowhere"], "--old nowhere: no train_gpt_gdn.py there"),
    ("bench_conv_kernels.py", ["--old", ".", "--shapes", "6x8192x336", "--x-row-width", "100"],
     "--x-row-width 100: expected 0 or a width >= every shape's D"),
    ("step_timing.py", [str(REPO / "train_gpt.py"), "--skip", "-1"], "--skip -1: expected >= 0"),
    ("gpu/bench_attention_split.py", ["--chunks", "2,x"], "--chunks '2,x'"),
    ("gpu/bench_attention_split.py", ["--iters", "0"], "--iters 0"),
    ("gpu/bench_attention_impls.py", ["--iters", "0"], "--iters 0: expected a positive integer"),
    ("gpu/bench_attention_impls.py", ["--seq-lens", "16k"], "--seq-lens '16k'"),
    ("gpu/bench_attention_impls.py", ["--check-seq-lens", "0"], "--check-seq-lens '0'"),
    ("gpu/bench_recurrence_tiles.py", ["--shapes", "2x100"], "--shapes '2x100': expected comma-separated BxT"),
    ("gpu/bench_recurrence_tiles.py", ["--shapes", "2x32768,3"], "--shapes '2x32768,3'"),
    ("gpu/bench_recurrence_tiles.py", ["--bv", "16,x"], "--bv '16,x'"),
    ("gpu/bench_recurrence_tiles.py", ["--iters", "0"], "--iters 0: expected a positive integer"),
    ("gpu/bench_state_chain.py", ["--shapes", "2x100"], "--shapes '2x100': expected comma-separated BxT"),
    ("gpu/bench_state_chain.py", ["--reference-shape", "1x64,2x64"], "--reference-shape '1x64,2x64': expected one"),
    ("gpu/bench_state_chain.py", ["--reference-shape", "1x50"], "--reference-shape '1x50': expected comma-sep"),
    ("gpu/bench_state_chain.py", ["--segments", "0,x"], "--segments '0,x': expected comma-separated whole"),
    ("gpu/bench_state_chain.py", ["--segments", "-4"], "--segments '-4': expected comma-separated whole"),
    ("gpu/bench_state_chain.py", ["--iters", "0"], "--iters 0: expected a positive integer"),
    ("gpu/bench_state_chain.py", ["--flush-mib", "0"], "--flush-mib 0: expected a positive integer"),
    ("gpu/bench_state_prep.py", ["--shapes", "2x100"], "--shapes '2x100': expected comma-separated BxT"),
    ("gpu/bench_state_prep.py", ["--flush-mib", "0"], "--flush-mib 0: expected a positive integer"),
    ("gpu/bench_wy_bwd.py", ["--shapes", "2x100"], "--shapes '2x100': expected comma-separated BxT"),
    ("gpu/bench_wy_bwd.py", ["--reference-shape", "1x64,2x64"], "--reference-shape '1x64,2x64': expected one"),
    ("gpu/bench_wy_bwd.py", ["--iters", "0"], "--iters 0: expected a positive integer"),
])
def test_bad_option_is_refused(tool, args, message):
    r = subprocess.run([sys.executable, str(REPO / "tools" / tool), *args], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr[-1000:]
    assert message in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("env,message", [
    (dict(RUNS="hybrid:8192 gpt:1024"), "RUNS: unknown model 'gpt'"),
    (dict(RUNS="check baseline:8k"), "RUNS: seq '8k'"),
    (dict(LIMIT="five"), "LIMIT=five"),
    (dict(RUNS="hybrid:32768:v27:GDN_DQKWG"), "RUNS: setting 'GDN_DQKWG' in 'hybrid:32768:v27:GDN_DQKWG' is not"),
    (dict(RUNS="hybrid:32768::GDN_DQKWG=0"), "has settings without a LABEL"),
    (dict(RUNS="hybrid:32768:v/27"), "RUNS: label 'v/27'"),
    (dict(RUNS="hybrid:32768:v27:A=1:B=2"), "settings are comma-separated"),
])
def test_profile_session_checks_its_items_first(tmp_path, env, message):
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(REPO / "tools/gpu/profile_session.sh"), str(out)], capture_output=True,
                       text=True, env={**os.environ, **env}, timeout=60)
    assert r.returncode == 2 and message in r.stderr
    assert not out.exists()  # nothing started


def test_profile_session_gives_each_run_its_label_and_settings(tmp_path):
    """RUNS items with a label and settings: each run gets its own settings only, and files named by its label
    (a python3 stand-in on PATH records what each profile run was given)."""
    bin_dir, data, out, rec = tmp_path / "bin", tmp_path / "data", tmp_path / "out", tmp_path / "calls.txt"
    bin_dir.mkdir()
    data.mkdir()
    (data / "synthetic_train_000000.bin").write_bytes(b"")
    tok = tmp_path / "tok.model"
    tok.write_bytes(b"")
    fake = bin_dir / "python3"
    fake.write_text("#!/bin/sh\n"
                    f'echo "RUN_ID=$RUN_ID GDN_DQKWG=${{GDN_DQKWG-unset}} GDN_WY_BWD=${{GDN_WY_BWD-unset}} $*" >> {rec}\n'
                    'echo "profile_per_step fake"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DATA_PATH": str(data), "TOKENIZER_PATH": str(tok),
           "RUNS": "hybrid:32768:v27:GDN_DQKWG=0,GDN_WY_BWD=0 hybrid:32768:v29 baseline:8192"}
    env.pop("GDN_DQKWG", None)
    env.pop("GDN_WY_BWD", None)
    r = subprocess.run(["bash", str(REPO / "tools/gpu/profile_session.sh"), str(out)], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    calls = rec.read_text().splitlines()
    assert len(calls) == 3, calls
    assert calls[0].startswith("RUN_ID=profile_hybrid_seq32768_v27 GDN_DQKWG=0 GDN_WY_BWD=0 ")
    assert f"--out {out}/profile_hybrid_seq32768_v27.txt" in calls[0] and "train_gpt_gdn.py" in calls[0]
    assert calls[1].startswith("RUN_ID=profile_hybrid_seq32768_v29 GDN_DQKWG=unset GDN_WY_BWD=unset ")
    assert calls[2].startswith("RUN_ID=profile_baseline_seq8192 GDN_DQKWG=unset ") and "train_gpt.py " in calls[2]
    assert (out / "profile_hybrid_seq32768_v27.log").read_text().strip() == "profile_per_step fake"
    assert "hybrid:32768:v27:GDN_DQKWG=0,GDN_WY_BWD=0: exit 0" in r.stdout


@pytest.mark.parametrize("args,env,message", [
    (["OLD"], {}, "usage: bash tools/gpu/verify_session.sh OUT_DIR OLD_DIR"),
    (["nowhere"], {}, "OLD_DIR nowhere: no train_gpt_gdn.py there"),
    ([str(REPO)], dict(STAGES="gdn bench"), "STAGES: unknown stage 'bench' (expected chain, wy, dqkwg, fwdo, gdn,"),
    ([str(REPO)], dict(STAGES="chain", CHAIN_SEGMENTS="16,x"), "CHAIN_SEGMENTS=16,x: expected comma-separated"),
])
def test_verify_session_checks_its_arguments_first(tmp_path, args, env, message):
    out = tmp_path / "out"
    argv = [str(out)] + args if args != ["OLD"] else [str(out)]
    r = subprocess.run(["bash", str(REPO / "tools/gpu/verify_session.sh"), *argv], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=60)
    assert r.returncode == 2 and message in r.stderr
    assert not out.exists()  # nothing started


def test_poll_packs_a_finished_session(tmp_path):
    """tools/gpu/poll.sh outside a device call says so; inside one (OUT set) it packs the session directory into
    one file and stops once the done-file is there."""
    src, out = tmp_path / "s", tmp_path / "o"
    src.mkdir()
    out.mkdir()
    (src / "probes.txt").write_text("probe model:hybrid\n")
    (src / "ALL.done").touch()
    r = subprocess.run(["bash", str(REPO / "tools/gpu/poll.sh"), str(src), "60"], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "OUT"}, timeout=60)
    assert r.returncode == 2 and "$OUT is not set" in r.stderr
    r = subprocess.run(["bash", str(REPO / "tools/gpu/poll.sh"), str(src), "60"], capture_output=True, text=True,
                       env={**os.environ, "OUT": str(out)}, timeout=60)
    assert r.returncode == 0 and "probes.txt" in r.stdout
    listing = subprocess.run(["tar", "tzf", str(out / "results.tgz")], capture_output=True, text=True).stdout
    assert "./probes.txt" in listing and "./ALL.done" in listing


def wait_for(path, seconds=60):
    end = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < end:
        time.sleep(0.2)
    return path.exists()


def test_detach_runs_the_command_in_a_snapshot_and_records_its_exit(tmp_path):
    """tools/gpu/detach.sh copies the tree (not .git) to SNAP_DIR, runs the command there in the background and
    writes its exit status to the done-file; it refuses a non-empty SNAP_DIR or one inside the tree before starting
    anything."""
    snap, log, done = tmp_path / "snap", tmp_path / "s.log", tmp_path / "s" / "FIN"
    r = subprocess.run(["bash", str(REPO / "tools/gpu/detach.sh"), str(snap), str(log), str(done),
                        "bash", "-c", "pwd; ls tools/gpu/detach.sh; test ! -e .git; exit 3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "detached: pid" in r.stdout, r.stderr
    assert wait_for(done) and wait_for(log)
    time.sleep(0.2)  # the done-file may exist a moment before its line is in it
    assert done.read_text().strip() == "exit 3"  # the command's own status, not the launcher's
    out = log.read_text().split()
    assert out[0] == str(snap) and out[1] == "tools/gpu/detach.sh"  # it ran in the snapshot, which has no .git
    r = subprocess.run(["bash", str(REPO / "tools/gpu/detach.sh"), str(snap), str(log), str(done), "true"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"SNAP_DIR {snap}: exists and is not empty" in r.stderr
    inside = REPO / "logs" / "snap_test_never_made"
    r = subprocess.run(["bash", str(REPO / "tools/gpu/detach.sh"), str(inside), str(log), str(done), "true"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "inside the tree it copies" in r.stderr and not inside.exists()
    r = subprocess.run(["bash", str(REPO / "tools/gpu/detach.sh"), str(tmp_path / "x"), str(log), str(done)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage:" in r.stderr


def test_probe_block_kernels_checks_its_scripts_first(tmp_path):
    missing = tmp_path / "nope.py"
    r = subprocess.run([sys.executable, str(REPO / "tools/gpu/probe_block_kernels.py"), str(missing)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"SCRIPT {missing}: expected an existing training script" in r.stderr


def test_probe_model_launches_checks_its_options_first():
    r = subprocess.run([sys.executable, str(REPO / "tools/gpu/probe_model_launches.py"), "--batch", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--batch 0 --seq-len 8192: expected a batch >= 1" in r.stderr


@pytest.mark.parametrize("argv,message", [(["--splits", "32,x"], "--splits '32,x': expected comma-separated"),
                                          (["--rows", "0"], "--rows 0 --dim 512 --iters 50: expected positive")])
def test_bench_mix_order_split_checks_its_options_first(argv, message):
    r = subprocess.run([sys.executable, str(REPO / "tools/gpu/bench_mix_order_split.py"), *argv],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr


def test_probe_step_kernels_checks_its_options_first(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "tools/gpu/probe_step_kernels.py"), "--script-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"--script-dir {tmp_path}: expected a folder holding train_gpt.py" in r.stderr
    r = subprocess.run([sys.executable, str(REPO / "tools/gpu/probe_step_kernels.py"), "--seq-len", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--batch 6 --seq-len 1: expected" in r.stderr
