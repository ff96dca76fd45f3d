"""Shared fixtures and helpers for the tests of the two training scripts (CPU only).

- load_script(name): import train_gpt.py / train_gpt_gdn.py from the repo root as modules (cached).
- write_shard / learnable_tokens / make_dataset: small train/val shards in the exact shard format of SPEC.md.
- dataset: a fixture writing such shards (2 train, 1 val) under tmp_path/data.
- clean_env: a pytest fixture that removes every setting the scripts read from the environment.
- script_env / run_script: run a script (or a two-process torchrun) as a subprocess with tiny settings.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

# The tests use tiny tensors: one intra-op thread is fastest, and on a busy 2-core machine more threads make
# OpenMP spin and slow every op by ~10x. Subprocess runs get OMP_NUM_THREADS=1 for the same reason.
torch.set_num_threads(int(os.environ.get("TEST_TORCH_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO.parent / "shared" / "data" / "fineweb_1024_bpe.model"
SCRIPTS = ("train_gpt", "train_gpt_gdn")
SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256

needs_tokenizer = pytest.mark.skipif(not TOKENIZER.is_file(), reason=f"real tokenizer missing: {TOKENIZER}")

_MODULES: dict[str, object] = {}


def load_script(name: str):
    """Import <repo>/<name>.py as a module (once per session). Importing runs no training: main() is guarded."""
    if name not in _MODULES:
        mod_name = f"_under_test_{name}"
        spec = importlib.util.spec_from_file_location(mod_name, REPO / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod  # so pickling/inspection can find it
        spec.loader.exec_module(mod)
        _MODULES[name] = mod
    return _MODULES[name]


def env_names() -> set[str]:
    """Every environment variable either script reads (parsed from their sources) plus the launcher's."""
    names = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "FORCE_CPU",
             "TORCHELASTIC_RUN_ID", "GROUP_RANK", "ROLE_RANK"}
    for script in SCRIPTS:
        src = (REPO / f"{script}.py").read_text(encoding="utf-8")
        names |= set(re.findall(r"""env_\w+\(\s*["']([A-Z0-9_]+)["']""", src))
        names |= set(re.findall(r"""os\.environ\.get\(\s*["']([A-Z0-9_]+)["']""", src))
    return names


@pytest.fixture
def clean_env(monkeypatch):
    """No training setting in the environment: Hyperparameters() then gives the script defaults."""
    for name in env_names():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ------------------------------------------------------------------------------------------------
# Shards
# ------------------------------------------------------------------------------------------------


def write_shard(path: Path, tokens, magic: int = SHARD_MAGIC, version: int = SHARD_VERSION,
                count: int | None = None) -> Path:
    """A shard as SPEC.md defines it: 256 little-endian int32 header ([0] magic, [1] version, [2] count), then
    the tokens as little-endian uint16. magic/version/count can be overridden to write broken shards."""
    tokens = np.asarray(tokens)
    assert tokens.min(initial=0) >= 0 and tokens.max(initial=0) < 65536
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1] = magic, version
    header[2] = tokens.size if count is None else count
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.tobytes() + tokens.astype("<u2").tobytes())
    return path


def learnable_tokens(n: int, seed: int = 0, lo: int = 4, hi: int = 1024) -> np.ndarray:
    """A Markov chain over ordinary token ids (no control/unknown ids 0..3) in which every token has exactly two
    possible successors, picked at random: a tiny model quickly learns the rule (loss falls from ln(1024) ~ 6.93
    towards ln 2 ~ 0.69), while the random choices make every span of the stream different, so reading the
    wrong span shows in the losses. The rule is the same for every shard (val measures what train taught);
    the choices depend on `seed`."""
    rules = np.random.default_rng(1234)
    succ = np.stack([rules.permutation(np.arange(lo, hi)), rules.permutation(np.arange(lo, hi))])  # (2, hi - lo)
    picks = np.random.default_rng(seed).integers(0, 2, size=n)
    out = np.empty(n, dtype=np.int64)
    tok = lo + int(np.random.default_rng(seed + 10_000).integers(hi - lo))
    for i in range(n):
        out[i] = tok
        tok = int(succ[picks[i], tok - lo])
    return out.astype(np.uint16)


@dataclass
class Dataset:
    path: Path
    train_files: list[Path]
    val_file: Path


def make_dataset(root: Path, train_tokens=(40_000, 30_000), val_tokens: int = 6_000) -> Dataset:
    root = Path(root)
    train = [write_shard(root / f"fineweb_train_{i:06d}.bin", learnable_tokens(n, seed=i + 1))
             for i, n in enumerate(train_tokens)]
    val = write_shard(root / "fineweb_val_000000.bin", learnable_tokens(val_tokens, seed=0))
    return Dataset(root, train, val)


@pytest.fixture
def dataset(tmp_path) -> Dataset:
    return make_dataset(tmp_path / "data")


# ------------------------------------------------------------------------------------------------
# Subprocess runs
# ------------------------------------------------------------------------------------------------

TINY = {
    "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "NUM_LAYERS": "4",
    "TRAIN_SEQ_LEN": "128", "TRAIN_BATCH_TOKENS": "4096", "VAL_BATCH_SIZE": "8192", "VAL_MAX_TOKENS": "2048",
    "ITERATIONS": "15", "WARMUP_STEPS": "2", "WARMDOWN_ITERS": "0", "MAX_WALLCLOCK_SECONDS": "0",
    "VAL_LOSS_EVERY": "0", "TRAIN_LOG_EVERY": "5", "MUON_MOMENTUM_WARMUP_STEPS": "5",
}


def script_env(script: str, data_path: Path | str, **overrides) -> dict[str, str]:
    """Tiny settings for a CPU run of `script` on the shards in data_path; overrides win (None deletes)."""
    env = dict(TINY, DATA_PATH=str(data_path), TOKENIZER_PATH=str(TOKENIZER), SEED="7")
    if script == "train_gpt_gdn":
        env["GDN_LAYERS"] = "0,1,3"
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


def base_environ() -> dict[str, str]:
    """The current environment without any setting the scripts read, so only what a test passes applies."""
    env = {k: v for k, v in os.environ.items() if k not in env_names()}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU runs even where a GPU exists
    return env


def run_script(script: str, env: dict[str, str], cwd: Path, timeout: float = 240, nproc: int | None = None,
               ) -> subprocess.CompletedProcess:
    """Run <repo>/<script>.py with `env` added to a clean environment, in cwd (logs/ lands there).
    nproc: run under `python -m torch.distributed.run --standalone --nproc_per_node=nproc` (gloo on CPU)."""
    full_env = base_environ()
    full_env.update(env)
    cmd = [sys.executable]
    if nproc is not None:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd.append(str(REPO / f"{script}.py"))
    return subprocess.run(cmd, env=full_env, cwd=str(cwd), capture_output=True, text=True, timeout=timeout)


def read_log(cwd: Path, run_id: str) -> str:
    return (Path(cwd) / "logs" / f"{run_id}.txt").read_text(encoding="utf-8")


def train_losses(log: str) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2))
            for m in re.finditer(r"^step:(\d+)/\d+ train_loss:(\S+)", log, flags=re.M)}


def val_lines(log: str) -> dict[int, tuple[float, float]]:
    return {int(m.group(1)): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^step:(\d+)/\d+ val_loss:(\S+) val_bpb:(\S+)", log, flags=re.M)}
