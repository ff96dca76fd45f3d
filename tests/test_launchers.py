"""The launchers (run_*_long_context_single_h100.sh, launchers/common.sh), run through bash.

Most tests use DRY_RUN=1 (print the settings and the command, run nothing) with PROFILE=gpu or PROFILE=cpu, so
the GPU presets of SPEC.md are checked on a CPU host. Two tests run for real in a scratch copy of the repo: one
with stub scripts (data fallback, log head), one with the real baseline script at a tiny size (launcher ->
training -> log -> tools/summarize_logs.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_TOKENIZER = ROOT.parent / "shared" / "data" / "fineweb_1024_bpe.model"
SEQS = (8192, 16384, 32768)
MODELS = ("baseline", "hybrid")
SETTING = re.compile(r"^launcher:   ([A-Z0-9_]+)=(\S*)  \((.+)\)$")

COMMON = {
    "VOCAB_SIZE": "1024", "TIED_EMBED_LR": "0.030", "MATRIX_LR": "0.020", "SCALAR_LR": "0.020",
    "MUON_MOMENTUM": "0.99", "MUON_MOMENTUM_WARMUP_START": "0.92",
}
GPU_COMMON = {"MAX_WALLCLOCK_SECONDS": "600", "WARMUP_STEPS": "20", "TRAIN_LOG_EVERY": "10", "VAL_LOSS_EVERY": "50"}
# SPEC.md "Launcher presets": batch tokens, momentum warm-up steps, warm-down steps, seed.
GPU_TABLE = {
    ("baseline", 8192): (393216, 190, 381, 1337),
    ("baseline", 16384): (393216, 118, 236, 1338),
    ("baseline", 32768): (524288, 50, 100, 1339),
    ("hybrid", 8192): (393216, 160, 320, 1340),
    ("hybrid", 16384): (393216, 104, 208, 1341),
    ("hybrid", 32768): (524288, 79, 158, 1342),
}


def clean_env(**extra: str) -> dict[str, str]:
    """Only what a shell needs, so the developer's exported settings (SEED, RUN_ID, ...) cannot leak in."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH", "LD_LIBRARY_PATH")
           if k in os.environ}
    env.update(extra)
    return env


def launch(script: str, *args: str, root: Path = ROOT, timeout: float = 60, **env: str):
    return subprocess.run(["bash", str(root / script), *args], cwd=root, env=clean_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def single(model: str) -> str:
    return f"run_{model}_long_context_single_h100.sh"


def settings(stdout: str) -> dict[str, tuple[str, str]]:
    return {m.group(1): (m.group(2), m.group(3)) for m in map(SETTING.match, stdout.splitlines()) if m}


def values(stdout: str) -> dict[str, str]:
    return {k: v for k, (v, _) in settings(stdout).items()}


def command(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("launcher: command: ")]
    assert len(lines) == 1, stdout
    return lines[0][len("launcher: command: "):]


# -- arguments --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("args", [(), ("4096",), ("8192", "16384"), ("abc",), ("",), ("08192",)])
def test_single_rejects_bad_arguments_with_usage(model, args):
    r = launch(single(model), *args, PROFILE="gpu", DRY_RUN="1")
    assert r.returncode == 2
    assert f"usage: {single(model)} {{8192|16384|32768}}" in r.stderr
    assert "launcher: command:" not in r.stdout


@pytest.mark.parametrize("model", MODELS)
def test_all_rejects_bad_arguments_with_usage(model):
    r = launch(f"run_{model}_all_long_context_single_h100.sh", "8192", "1000", PROFILE="gpu", DRY_RUN="1")
    assert r.returncode == 2
    assert "usage:" in r.stderr and "unsupported sequence length '1000'" in r.stderr
    assert "launcher: command:" not in r.stdout  # checked before anything runs


@pytest.mark.parametrize("env, message", [
    ({"NPROC": "3"}, "NPROC='3'"),
    ({"NPROC": "x"}, "NPROC='x'"),
    ({"PROFILE": "tpu"}, "PROFILE='tpu'"),
    ({"TRAIN_SEQ_LEN": "1024"}, "TRAIN_SEQ_LEN=1024"),
    ({"PROFILE": "cpu", "CPU_SEQ_DIVISOR": "3"}, "CPU_SEQ_DIVISOR='3'"),
])
def test_bad_settings_fail_clearly(env, message):
    r = launch(single("baseline"), "8192", **{"PROFILE": "gpu", "DRY_RUN": "1", **env})
    assert r.returncode != 0
    assert message in r.stderr
    assert "launcher: command:" not in r.stdout


# -- presets ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("seq", SEQS)
def test_gpu_presets_are_exactly_the_spec(model, seq):
    r = launch(single(model), str(seq), PROFILE="gpu", DRY_RUN="1")
    assert r.returncode == 0, r.stderr
    batch, warm, down, seed = GPU_TABLE[(model, seq)]
    run_id = f"{'baseline' if model == 'baseline' else 'hybrid_gdn'}_1xh100_600s_seq{seq}"
    expected = {
        **COMMON, **GPU_COMMON,
        "TRAIN_SEQ_LEN": str(seq), "TRAIN_BATCH_TOKENS": str(batch), "MUON_MOMENTUM_WARMUP_STEPS": str(warm),
        "WARMDOWN_ITERS": str(down), "SEED": str(seed), "RUN_ID": run_id,
        "DATA_PATH": "./data/datasets/fineweb10B_sp1024",
        "TOKENIZER_PATH": "./data/tokenizers/fineweb_1024_bpe.model",
    }
    got = settings(r.stdout)
    assert {k: v for k, (v, _) in got.items()} == expected  # nothing more, nothing less
    assert {src for _, src in got.values()} == {"preset"}
    script = "train_gpt.py" if model == "baseline" else "train_gpt_gdn.py"
    assert command(r.stdout) == f"python3 -m torch.distributed.run --standalone --nproc_per_node=1 {script}"
    assert "CPU PROFILE" not in r.stdout


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("seq", SEQS)
def test_cpu_profile_is_the_same_study_scaled_down(model, seq):
    r = launch(single(model), str(seq), PROFILE="cpu", DRY_RUN="1")
    assert r.returncode == 0, r.stderr
    got = values(r.stdout)
    assert "CPU PROFILE" in r.stdout and "!!!" in r.stdout  # said loudly
    for k, v in COMMON.items():
        assert got[k] == v
    assert got["TRAIN_SEQ_LEN"] == str(seq // 16)
    assert got["MODEL_DIM"] == ("128" if model == "baseline" else "112")
    assert (got["NUM_HEADS"], got["NUM_KV_HEADS"]) == ("4", "2")
    assert got["TRAIN_BATCH_TOKENS"] == "16384"
    assert got["MAX_WALLCLOCK_SECONDS"] == "90"
    assert (got["WARMUP_STEPS"], got["TRAIN_LOG_EVERY"], got["VAL_LOSS_EVERY"]) == ("2", "5", "10")
    assert 0 < int(got["MUON_MOMENTUM_WARMUP_STEPS"]) < int(got["WARMDOWN_ITERS"]) < 30
    assert got["SEED"] == str(GPU_TABLE[(model, seq)][3])
    assert "NUM_LAYERS" not in got and "GDN_LAYERS" not in got  # the scripts' 9 layers and GDN layers
    assert got["RUN_ID"] == f"{'baseline' if model == 'baseline' else 'hybrid_gdn'}_cpu_seq{seq // 16}"
    # a valid batch for the script: a whole number of sequences per micro-step and per eval micro-batch
    assert int(got["TRAIN_BATCH_TOKENS"]) % (8 * int(got["TRAIN_SEQ_LEN"])) == 0
    assert int(got["VAL_BATCH_SIZE"]) >= 8 * int(got["TRAIN_SEQ_LEN"])


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_environment_overrides_win(profile):
    env = {"SEED": "7", "RUN_ID": "mine", "MAX_WALLCLOCK_SECONDS": "30", "MATRIX_LR": "0.05",
           "WARMDOWN_ITERS": "11", "DATA_PATH": "/x/y", "TOKENIZER_PATH": "/x/t.model", "VOCAB_SIZE": "1024"}
    if profile == "cpu":
        env.update(MODEL_DIM="64", VAL_MAX_TOKENS="4096")
    r = launch(single("hybrid"), "16384", PROFILE=profile, DRY_RUN="1", **env)
    assert r.returncode == 0, r.stderr
    got = settings(r.stdout)
    for k, v in env.items():
        assert got[k] == (v, "environment"), k
    assert got["TRAIN_BATCH_TOKENS"][1] == "preset"


def test_unpreset_script_settings_from_the_environment_are_shown():
    r = launch(single("hybrid"), "8192", PROFILE="gpu", DRY_RUN="1", GDN_IMPL="torch", COMPILE="0",
               NOT_A_SETTING="1")
    got = settings(r.stdout)
    assert got["GDN_IMPL"] == ("torch", "environment") and got["COMPILE"] == ("0", "environment")
    assert "NOT_A_SETTING" not in got


def test_empty_value_means_the_preset():
    r = launch(single("baseline"), "8192", PROFILE="gpu", DRY_RUN="1", SEED="")
    assert settings(r.stdout)["SEED"] == ("1337", "preset")


@pytest.mark.parametrize("nproc", ["2", "8"])
def test_nproc_runs_torchrun_with_that_many_processes(nproc):
    r = launch(single("baseline"), "32768", PROFILE="gpu", DRY_RUN="1", NPROC=nproc)
    assert r.returncode == 0, r.stderr
    assert command(r.stdout) == (f"python3 -m torch.distributed.run --standalone --nproc_per_node={nproc} "
                                 "train_gpt.py")


def test_dataset_pydocs_selects_its_own_tokenizer():
    r = launch(single("baseline"), "8192", PROFILE="gpu", DRY_RUN="1", DATASET="pydocs")
    got = values(r.stdout)
    assert got["DATA_PATH"] == "./data/datasets/pydocs_sp1024"
    assert got["TOKENIZER_PATH"] == "./data/tokenizers/pydocs_1024_bpe.model"


@pytest.mark.parametrize("model", MODELS)
def test_all_runs_the_three_lengths_in_turn(model):
    r = launch(f"run_{model}_all_long_context_single_h100.sh", PROFILE="gpu", DRY_RUN="1")
    assert r.returncode == 0, r.stderr
    seqs = [int(v) for v in re.findall(r"^launcher:   TRAIN_SEQ_LEN=(\d+)", r.stdout, re.M)]
    seeds = [int(v) for v in re.findall(r"^launcher:   SEED=(\d+)", r.stdout, re.M)]
    assert seqs == list(SEQS)
    assert seeds == [GPU_TABLE[(model, s)][3] for s in SEQS]
    # a RUN_ID given to the all-launcher is a prefix, so the three runs never share a log
    r = launch(f"run_{model}_all_long_context_single_h100.sh", "32768", "8192", PROFILE="gpu", DRY_RUN="1",
               RUN_ID="exp")
    assert re.findall(r"^launcher:   RUN_ID=(\S+)", r.stdout, re.M) == ["exp_seq32768", "exp_seq8192"]


# -- real runs in a scratch copy of the repo ---------------------------------------------------------------
def scratch_repo(tmp_path: Path, stub_scripts: bool) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("launchers", "tools"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for p in ROOT.glob("run_*long_context_single_h100.sh"):
        shutil.copy(p, root / p.name)
    (root / "data").mkdir()
    if not stub_scripts:
        for name in ("train_gpt.py", "train_gpt_gdn.py"):
            shutil.copy(ROOT / name, root / name)
        return root
    # Stubs: the fetcher is offline (exit 2, as data/fetch_fineweb.py without network), the builder makes
    # the pydocs files, the "training script" writes what it was given into its log.
    (root / "data" / "fetch_fineweb.py").write_text("import sys\nprint('hub unreachable', file=sys.stderr)\n"
                                                     "sys.exit(2)\n")
    (root / "data" / "build_pydocs_dataset.py").write_text(textwrap.dedent("""\
        from pathlib import Path
        d = Path("data/datasets/pydocs_sp1024"); d.mkdir(parents=True)
        (d / "pydocs_train_000000.bin").write_bytes(b"x"); (d / "pydocs_val_000000.bin").write_bytes(b"x")
        t = Path("data/tokenizers"); t.mkdir(parents=True); (t / "pydocs_1024_bpe.model").write_bytes(b"x")
        print("built pydocs")
    """))
    stub = textwrap.dedent("""\
        import os
        with open(f"logs/{os.environ['RUN_ID']}.txt", "a") as f:
            for k in ("DATA_PATH", "TOKENIZER_PATH", "SEED", "RANK", "WORLD_SIZE"):
                f.write(f"stub {k}={os.environ.get(k)}\\n")
    """)
    for name in ("train_gpt.py", "train_gpt_gdn.py"):
        (root / name).write_text(stub)
    return root


def test_offline_fallback_is_loud_and_written_at_the_head_of_the_log(tmp_path):
    root = scratch_repo(tmp_path, stub_scripts=True)
    r = launch(single("hybrid"), "8192", root=root, PROFILE="cpu")
    assert r.returncode == 0, r.stderr
    assert "DATASET IS NOT FINEWEB" in r.stdout and "Hub is unreachable" in r.stdout
    assert "built pydocs" in r.stdout
    log = (root / "logs" / "hybrid_gdn_cpu_seq512.txt").read_text().splitlines()
    assert log[0].startswith("launcher: !!!")
    assert any("DATASET IS NOT FINEWEB" in line for line in log)
    assert "launcher:   DATA_PATH=./data/datasets/pydocs_sp1024  (offline fallback)" in log
    assert "stub DATA_PATH=./data/datasets/pydocs_sp1024" in log
    assert "stub TOKENIZER_PATH=./data/tokenizers/pydocs_1024_bpe.model" in log
    assert "stub WORLD_SIZE=1" in log  # started through torch.distributed.run
    assert all(line.startswith(("launcher:", "stub ")) for line in log)
    # a second run finds the built data and does not rebuild it
    r = launch(single("hybrid"), "8192", root=root, PROFILE="cpu", DATASET="pydocs")
    assert r.returncode == 0 and "built pydocs" not in r.stdout and "DATASET IS NOT FINEWEB" in r.stdout


def test_no_fallback_when_fineweb_is_demanded_or_paths_are_named(tmp_path):
    root = scratch_repo(tmp_path, stub_scripts=True)
    r = launch(single("baseline"), "8192", root=root, PROFILE="cpu", DATASET="fineweb")
    assert r.returncode != 0 and "DATASET=fineweb forbids the fallback" in r.stderr
    r = launch(single("baseline"), "8192", root=root, PROFILE="cpu", DATA_PATH=str(tmp_path / "none"))
    assert r.returncode != 0 and "expected *_train_*.bin" in r.stderr
    assert "fetching" not in r.stdout  # a path the user named is never swapped for another
    assert not (root / "data" / "datasets").exists()


def test_failed_training_is_reported_with_its_status(tmp_path):
    root = scratch_repo(tmp_path, stub_scripts=True)
    (root / "train_gpt.py").write_text("import sys\nsys.exit(3)\n")
    r = launch(single("baseline"), "8192", root=root, PROFILE="cpu", DATASET="pydocs")
    assert r.returncode != 0
    assert "training exited with status" in r.stderr
    assert "launcher: training exited with status" in (root / "logs" / "baseline_cpu_seq512.txt").read_text()


@pytest.mark.skipif(not SHARED_TOKENIZER.exists(), reason="needs ../shared/data/fineweb_1024_bpe.model")
def test_tiny_real_run_through_the_all_launcher_is_parsed_and_summarised(tmp_path):
    root = scratch_repo(tmp_path, stub_scripts=False)
    sys.path.insert(0, str(ROOT))
    from data.shards import write_shard
    from tools.log_parser import parse_file

    data = tmp_path / "tiny_sp1024"
    rng = np.random.default_rng(0)
    write_shard(data / "tiny_train_000000.bin", rng.integers(4, 1024, 200_000))
    write_shard(data / "tiny_val_000000.bin", rng.integers(4, 1024, 20_000))
    tiny = dict(PROFILE="cpu", CPU_SEQ_DIVISOR="128", MODEL_DIM="32", NUM_HEADS="2", NUM_KV_HEADS="1",
                TRAIN_BATCH_TOKENS="1024", VAL_BATCH_SIZE="1024", VAL_MAX_TOKENS="2048",
                MAX_WALLCLOCK_SECONDS="2", WARMUP_STEPS="1", VAL_LOSS_EVERY="4", TRAIN_LOG_EVERY="2",
                DATA_PATH=str(data), TOKENIZER_PATH=str(SHARED_TOKENIZER), OUTPUT_DIR=str(tmp_path / "out"),
                RUN_ID="tiny")
    r = launch("run_baseline_all_long_context_single_h100.sh", "8192", root=root, timeout=300, **tiny)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "DATASET IS NOT FINEWEB: training on tiny_sp1024" in r.stdout
    log = root / "logs" / "tiny_seq8192.txt"
    text = log.read_text()
    assert text.startswith("launcher: ")
    pf = parse_file(log)
    assert not pf.problems and not pf.malformed
    (run,) = pf.runs
    assert run.status == "complete" and not run.malformed
    assert (run.model_kind, run.seq_len, run.batch_tokens, run.seed) == ("baseline", 64, 1024, 1337)
    assert run.dataset == "tiny_sp1024"
    summary = (root / "logs" / "summary_baseline.md").read_text()
    assert "| tiny_seq8192.txt | 1 | baseline | 64 |" in summary
    assert (root / "logs" / "summary_baseline.csv").exists()
    assert (root / "logs" / "plots" / "baseline" / "val_bpb_seq64.png").exists()
    assert "## Crossover" in r.stdout  # the table is printed at the end


@pytest.mark.parametrize("script", [single("hybrid"), "run_hybrid_all_long_context_single_h100.sh"])
def test_help_lists_the_launcher_settings(script):
    r = launch(script, "--help")
    assert r.returncode == 0
    for name in ("PROFILE=", "NPROC=", "DRY_RUN=", "DATASET=", "CPU_SEQ_DIVISOR="):
        assert name in r.stdout


# -- run_study.sh and the installer --------------------------------------------------------------------
def test_study_dry_run_runs_each_length_for_both_models_with_study_named_logs():
    r = launch("run_study.sh", PROFILE="gpu", DRY_RUN="1", STUDY_ID="t1", SEQ_LENS="32768 8192", RUN_ID="ignored")
    assert r.returncode == 0, r.stderr
    run_ids = re.findall(r"^launcher:   RUN_ID=(\S+)", r.stdout, re.M)
    assert run_ids == ["baseline_1xh100_600s_seq32768_t1", "hybrid_gdn_1xh100_600s_seq32768_t1",
                       "baseline_1xh100_600s_seq8192_t1", "hybrid_gdn_1xh100_600s_seq8192_t1"]
    assert not (ROOT / "logs" / "study_t1").exists()  # a dry run writes nothing


@pytest.mark.parametrize("env, message", [
    ({"SEQ_LENS": "8192 4096"}, "unsupported sequence length '4096'"),
    ({"MODELS": "baseline mamba"}, "unknown model 'mamba'"),
    ({"MODELS": " "}, "must not be empty"),
    ({"STUDY_ID": "a/b"}, "STUDY_ID='a/b'"),
])
def test_study_rejects_bad_settings(env, message):
    r = launch("run_study.sh", PROFILE="gpu", DRY_RUN="1", **env)
    assert r.returncode != 0 and message in r.stderr
    assert "launcher: command:" not in r.stdout


def test_installer_never_replaces_an_installed_torch(tmp_path):
    # Every line names an installed package at a version that does not exist: nothing may be installed.
    req = tmp_path / "req.txt"
    req.write_text("# comment\ntorch==0.0.1\nnumpy==0.0.1  # pinned\n\n")
    r = subprocess.run(["bash", "-c", f'source "{ROOT}/launchers/common.sh"; lc_pip_install "{req}"'],
                       env=clean_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "everything in" in r.stdout and "installing" not in r.stdout
    assert "keeping installed torch" in r.stderr and "keeping installed numpy" in r.stderr
