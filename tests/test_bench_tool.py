"""tools/bench_step_time.py: FLOP model and a tiny end-to-end run on CPU whose probe lines the log tool reads."""

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools import bench_step_time as bench  # noqa: E402
from tools.log_parser import parse_file  # noqa: E402

TOKENIZER = ROOT.parent / "shared" / "data" / "fineweb_1024_bpe.model"


def test_flop_model_counts_matmuls_and_attention():
    # Baseline matrix params (blocks + tied head) give 6 * N per token; attention adds 6 * T * dim per layer.
    n_matrix = 9 * (512 * 512 * 2 + 512 * 256 * 2 + 2 * 512 * 1024) + 1024 * 512
    assert bench.model_flops_per_token("baseline", 1) == pytest.approx(3 * (2 * n_matrix + 9 * 2 * 512))
    for model in ("baseline", "hybrid"):
        assert bench.model_flops_per_token(model, 32768) > bench.model_flops_per_token(model, 8192)
    # Attention is quadratic, the hybrid's GDN linear: the hybrid grows far less with context.
    growth = {m: bench.model_flops_per_token(m, 32768) / bench.model_flops_per_token(m, 8192)
              for m in ("baseline", "hybrid")}
    assert growth["hybrid"] < growth["baseline"]


def test_bad_arguments_fail_with_a_message(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tools/bench_step_time.py"), "--models", "gpt5"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "--models" in r.stderr


@pytest.mark.skipif(not TOKENIZER.is_file(), reason="needs ../shared/data/fineweb_1024_bpe.model")
def test_tiny_cpu_run_writes_probe_lines(tmp_path):
    env = dict(os.environ, MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", COMPILE="0", OMP_NUM_THREADS="1",
               BENCH_WORKDIR=str(tmp_path / "work"))
    # An "older version" folder holding a copy of the script: --script-dir runs it, --label tags its probe lines.
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "train_gpt.py").write_text((ROOT / "train_gpt.py").read_text())
    r = subprocess.run([sys.executable, str(ROOT / "tools/bench_step_time.py"), "--models", "baseline",
                        "--seq-lens", "128", "--steps", "4", "--warmup", "1", "--batch-tokens", "8192",
                        "--data", str(tmp_path / "data"), "--tokenizer", str(TOKENIZER),
                        "--script-dir", str(tmp_path / "old"), "--label", "v9",
                        "--out-dir", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    logs = list((tmp_path / "out").glob("bench_step_time_*.txt"))
    assert len(logs) == 1 and list((tmp_path / "out").glob("*.png"))
    probes = parse_file(logs[0]).probes
    assert len(probes) == 1
    p = probes[0]
    assert (p.model, p.seq_len, p.batch_tokens, p.card) == ("baseline", 128, 8192, "cpu")
    assert p.ms_per_step > 0 and p.tokens_per_s == pytest.approx(8192 / (p.ms_per_step / 1000), rel=0.01)
    assert p.version == "v9" and "old" in logs[0].read_text().splitlines()[0]
    text = logs[0].read_text()
    assert " cuda_graphs:False " in text  # from the run's `device:` line (CPU: no graphs)
    assert " step_overlap:0 " in text  # auto: off on CPU
    share = float(text.split(" cpu_fraction:")[1].split()[0])  # tools/step_timing.py's, over the measured steps
    assert 0 < share <= 1.0
    assert float(text.split(" first_step_s:")[1].split()[0]) > 0  # the warm-up step: compilation and tuning
    assert " picks:- " in text  # no autotune_picks line: a baseline run (GDN runs on FLA's path log one)


def test_script_dir_without_the_scripts_fails(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tools/bench_step_time.py"), "--models", "hybrid",
                        "--script-dir", str(tmp_path), "--tokenizer", str(TOKENIZER)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "--script-dir" in r.stderr and "train_gpt_gdn.py" in r.stderr


def test_plot_from_probe_lines(tmp_path):
    log = tmp_path / "bench.txt"
    log.write_text("bench_step_time header\n"
                   "probe model:baseline seq_len:8192 batch_tokens:393216 ms_per_step:464.5 card:H200 version:v1\n"
                   "probe model:baseline seq_len:8192 batch_tokens:393216 ms_per_step:412.0 card:H200 version:v2\n"
                   "probe model:hybrid seq_len:32768 batch_tokens:524288 ms_per_step:949.5 card:H200 version:v2\n")
    probes = parse_file(log).probes
    assert [p.version for p in probes] == ["v1", "v2", "v2"]
    assert bench.main(["--plot-from", str(log), "--out-dir", str(tmp_path / "plots")]) == 0
    assert len(list((tmp_path / "plots").glob("*.png"))) == 1
    assert bench.main(["--plot-from", str(tmp_path / "missing.txt"), "--out-dir", str(tmp_path)]) == 2


@pytest.mark.skipif(not TOKENIZER.is_file(), reason="needs ../shared/data/fineweb_1024_bpe.model")
def test_ab_session_runs_items_in_order(tmp_path):
    """tools/gpu/ab_session.sh (GDN check off: it needs CUDA) on a tiny CPU config: one probe per item, labelled,
    an older script folder and per-item environment honoured, an inductor cache per label, the study's lines of
    each run kept, DONE written; a malformed item is refused before any run."""
    old = tmp_path / "old"
    old.mkdir()
    for name in ("train_gpt.py", "train_gpt_gdn.py"):
        (old / name).write_text((ROOT / name).read_text())
    subprocess.run([sys.executable, str(ROOT / "data/make_synthetic_dataset.py"), "--out", str(tmp_path / "data"),
                    "--train-tokens", "100000", "--val-tokens", "10000"], check=True, capture_output=True)
    env = dict(os.environ, BATCH_TOKENS="2048", STEPS="4",
               DATA_PATH=str(tmp_path / "data"), TOKENIZER_PATH=str(TOKENIZER), BENCH_WORKDIR=str(tmp_path / "w"),
               MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", COMPILE="0", OMP_NUM_THREADS="1")
    script, out = str(ROOT / "tools/gpu/ab_session.sh"), tmp_path / "out"
    bad = subprocess.run(["bash", script, str(out), "baseline:128:new", "hybrid:x:old"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "hybrid:x:old: seq 'x'" in bad.stderr and not (out / "probes.txt").exists()
    r = subprocess.run(["bash", script, str(out), "baseline:128:new",
                        f"baseline:128:old:{old}:COMPILE_MEMORY_BUDGET=0.5"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    probes = (out / "probes.txt").read_text().splitlines()
    assert len(probes) == 2 and probes[0].endswith("version:new") and probes[1].endswith("version:old")
    kept = sorted((out / "logs").glob("*.txt"), key=lambda f: f.stat().st_mtime)
    assert len(kept) == 2 and all("train_loss" in f.read_text() for f in kept)
    budgets = [ln.split("compile_memory_budget:")[1].split()[0] for f in kept for ln in f.read_text().splitlines()
               if ln.startswith("device:")]
    assert sorted(budgets) == ["0.5", "1"]
    assert sorted(d.name for d in (tmp_path / "w" / "inductor_cache").iterdir()) == ["new", "old"]  # one per label
    assert (out / "DONE").exists()


FAKE_SMI = """#!/usr/bin/env bash
# nvidia-smi for the test: the newer field name refused, as an older driver does; samples every 0.1 s at the cap
case "$*" in *clocks_event_reasons*) echo 'Field "clocks_event_reasons.active" is not a valid field'; exit 2 ;; esac
case "$*" in *clocks_throttle_reasons*) ;; *) exit 2 ;; esac
case "$*" in *-lms*) while :; do echo "$(date -u '+%Y/%m/%d %H:%M:%S.%3N'), 1755, 690.50, 700.00, 48, 0x0000000000000004"
  sleep 0.1; done ;; *) echo 0x0000000000000000 ;; esac
"""


def test_ab_session_repeat_alternates_order(tmp_path):
    """REPEAT=2 runs the items twice, the second round in reverse order (new, old, old, new); a bad REPEAT or
    BENCH_TIMEOUT is refused before any run. With an nvidia-smi on the PATH (a fake one of an older driver here), each
    run's times go to runs.txt and its clock and power to power.txt, one line per run."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    subprocess.run([sys.executable, str(ROOT / "data/make_synthetic_dataset.py"), "--out", str(tmp_path / "data"),
                    "--train-tokens", "100000", "--val-tokens", "10000"], check=True, capture_output=True)
    env = dict(os.environ, BATCH_TOKENS="2048", STEPS="4", REPEAT="x",
               DATA_PATH=str(tmp_path / "data"), TOKENIZER_PATH=str(TOKENIZER), BENCH_WORKDIR=str(tmp_path / "w"),
               MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", COMPILE="0", OMP_NUM_THREADS="1")
    script, out = str(ROOT / "tools/gpu/ab_session.sh"), tmp_path / "out"
    items = ["baseline:128:new", "baseline:128:old:.:COMPILE_MEMORY_BUDGET=0.5"]
    bad = subprocess.run(["bash", script, str(out), *items], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "REPEAT=x" in bad.stderr and not (out / "probes.txt").exists()
    env["REPEAT"], env["BENCH_TIMEOUT"] = "2", "0"
    bad = subprocess.run(["bash", script, str(out), *items], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "BENCH_TIMEOUT=0" in bad.stderr and not (out / "probes.txt").exists()
    env["BENCH_TIMEOUT"] = "420"
    r = subprocess.run(["bash", script, str(out), *items], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    labels = [ln.rsplit("version:", 1)[1] for ln in (out / "probes.txt").read_text().splitlines()]
    assert labels == ["new", "old", "old", "new"]
    assert (out / "bench_new_baseline_128.txt").exists() and (out / "bench_new_baseline_128_r2.txt").exists()
    if shutil.which("nvidia-smi") is None:
        assert not (out / "power.csv").exists()  # no nvidia-smi on the PATH: no sampler
    env["PATH"] = f"{smi.parent}:{env['PATH']}"
    r = subprocess.run(["bash", script, str(out), *items], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = [ln.split()[:4] for ln in (out / "runs.txt").read_text().splitlines()]
    assert runs == [["new", "baseline", "128", "1"], ["old", "baseline", "128", "1"],
                    ["old", "baseline", "128", "2"], ["new", "baseline", "128", "2"]]  # this session's runs only
    power = (out / "power.txt").read_text().splitlines()
    assert [ln.split()[1] for ln in power] == ["label:new", "label:old", "label:old", "label:new"], power
    assert all("sm_mhz_mean:1755 " in ln and ln.endswith("sw_power_cap:1.00 hw_slowdown:0.00 thermal:0.00")
               and int(ln.split("samples:")[1].split()[0]) > 0 for ln in power), power


def test_gdn_path_names_each_fla_path():
    """The probe's gdn field tells the GDN op path and the conv path apart (a v3 line names both)."""
    from tools.bench_step_time import gdn_path
    core = "gdn_impl:fla GDN core: fla-core 0.6.0 chunk_gated_delta_rule (TileLang backward: ...)"
    assert gdn_path(core + " as one torch custom op (whole-model compile graph)") == "fla-op"
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); conv: fla causal_conv1d as a "
                    "torch custom op") == "fla-op+conv-op"
    assert gdn_path(core + " (public op, graph breaks: custom op not registered: X); conv: fla causal_conv1d as "
                    "a torch custom op") == "fla-public+conv-op"
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); conv: PyTorch (fla "
                    "causal_conv1d not registered: Y)") == "fla-op"
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); conv: triton conv1d+silu kernels "
                    "as a torch custom op") == "fla-op+conv-op"
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); conv: triton conv1d+silu kernels "
                    "as a torch custom op; chunk states saved for the backward (GDN_SAVE_STATE=1)") \
        == "fla-op+conv-op+saved-state"
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); chunk states saved for the backward "
                    "(GDN_SAVE_STATE=auto); w and v_new saved too (GDN_SAVE_WV=auto); conv: triton conv1d+silu "
                    "kernels as a torch custom op") == "fla-op+conv-op+saved-state+saved-wv"
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); chunk states saved for the backward "
                    "(GDN_SAVE_STATE=auto); w and v_new saved too (GDN_SAVE_WV=auto); state recurrences: our chain "
                    "kernels (GDN_STATE_CHAIN=1); conv: triton conv1d+silu kernels as a torch custom op") \
        == "fla-op+conv-op+saved-state+saved-wv+state-chain"
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); chunk states saved for the backward "
                    "(GDN_SAVE_STATE=auto); w and v_new saved too (GDN_SAVE_WV=auto); backward state recurrence: our "
                    "chain kernels (GDN_STATE_CHAIN=bwd)") == "fla-op+saved-state+saved-wv+state-chain-bwd"
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); chunk states saved for the backward "
                    "(GDN_SAVE_STATE=auto); state recurrences: our chain kernels (GDN_STATE_CHAIN=1), in segments "
                    "of 32 chunks (GDN_CHAIN_SEGMENT)") == "fla-op+saved-state+state-chain+seg32"
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); chunk states saved for the backward "
                    "(GDN_SAVE_STATE=auto); state recurrences: our chain kernels (GDN_STATE_CHAIN=1), in segments "
                    "of 32 chunks (GDN_CHAIN_SEGMENT); WY backward: our kernel (GDN_WY_BWD=1)") \
        == "fla-op+saved-state+state-chain+seg32+wy"
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); chunk states saved for the backward "
                    "(GDN_SAVE_STATE=auto); WY backward: our kernel (GDN_WY_BWD=1); dq/dk/dw/dg backward: our kernel "
                    "(GDN_DQKWG=1); output: our kernel (GDN_FWD_O=1)") == "fla-op+saved-state+wy+dqkwg+fwd-o"
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); chunk states saved for the backward "
                    "(GDN_SAVE_STATE=auto); WY backward: our kernel (GDN_WY_BWD=auto); dq/dk/dw/dg backward: our "
                    "kernel (GDN_DQKWG=auto)") == "fla-op+saved-state+wy+dqkwg"  # v29's defaults
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); chunk states saved for the backward "
                    "(GDN_SAVE_STATE=auto); WY backward: our kernel (GDN_WY_BWD=auto); dq/dk/dw/dg backward: our "
                    "kernel (GDN_DQKWG=auto); output: our kernel (GDN_FWD_O=auto)") \
        == "fla-op+saved-state+wy+dqkwg+fwd-o"  # v30's defaults
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); conv: PyTorch (triton conv "
                    "kernels not registered: Z)") == "fla-op"
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); conv: triton conv1d+silu kernels "
                    "as a torch custom op; FLA autotuned at this run's shapes") == "fla-op+conv-op"
    assert gdn_path(core + " as one torch custom op (whole-model compile graph); conv: triton conv1d+silu kernels "
                    "as a torch custom op; FLA autotune picks from Triton's disk cache (FLA_CACHE_RESULTS=1: maybe "
                    "another shape's)") == "fla-op+conv-op+fla-disk-picks"
    assert gdn_path("gdn_impl:torch GDN core: our chunked PyTorch gated delta rule (fp32)") == "torch"
    assert gdn_path("") == "-"


def test_hybrid_refused_on_a_cuda_host_without_fla(monkeypatch, capsys):
    """On a CUDA host where fla-core does not import, timing the hybrid would time our PyTorch GDN form: the bench
    refuses it before any run, names the fix, and lets GDN_IMPL=torch ask for that form on purpose."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "fla", None)  # import fla -> ImportError
    monkeypatch.delenv("GDN_IMPL", raising=False)
    assert bench.fla_missing_for_hybrid(["baseline"]) is None
    why = bench.fla_missing_for_hybrid(["baseline", "hybrid"])
    assert why and "fla-core is not importable" in why and "install.sh" in why
    with pytest.raises(SystemExit) as e:
        bench.main(["--models", "hybrid", "--seq-lens", "128"])
    assert e.value.code == 2 and "fla-core is not importable" in capsys.readouterr().err
    monkeypatch.setenv("GDN_IMPL", "torch")
    assert bench.fla_missing_for_hybrid(["hybrid"]) is None
    monkeypatch.setitem(sys.modules, "fla", types.ModuleType("fla"))  # importable
    monkeypatch.delenv("GDN_IMPL")
    assert bench.fla_missing_for_hybrid(["hybrid"]) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.fla_missing_for_hybrid(["hybrid"]) is None  # CPU: the PyTorch form is the only one
