"""Bad settings and bad inputs must stop a run before any work: non-zero exit, one line on stderr naming the
variable or the file, no traceback, no log file and no artifact.

Every case runs main() in-process (the checks and their messages; milliseconds each), and a representative
subset also runs as a subprocess of the script (the program's behaviour: exit status, one stderr line, no
traceback). Running all cases as subprocesses costs ~3 s of CPU each for importing torch alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import TOKENIZER, learnable_tokens, load_script, make_dataset, run_script, script_env, write_shard

pytestmark = pytest.mark.skipif(not TOKENIZER.is_file(), reason=f"real tokenizer missing: {TOKENIZER}")


def good(root: Path) -> Path:
    return make_dataset(root / "data", train_tokens=(5000, 5000), val_tokens=1000).path


def only_val(root: Path) -> Path:
    d = good(root)
    for p in d.glob("*_train_*.bin"):
        p.unlink()
    return d


def only_train(root: Path) -> Path:
    d = good(root)
    (d / "fineweb_val_000000.bin").unlink()
    return d


def rewritten(name: str, n_tokens: int, **header):
    """A good dataset with one shard written again with other header fields (magic, version, count)."""
    def build(root: Path) -> Path:
        d = good(root)
        write_shard(d / name, learnable_tokens(n_tokens), **header)
        return d
    return build


bad_magic_second_train = rewritten("fineweb_train_000001.bin", 5000, magic=20240521)
bad_size_train = rewritten("fineweb_train_000001.bin", 5000, count=5001)
bad_version_val = rewritten("fineweb_val_000000.bin", 1000, version=3)


def short_val(root: Path) -> Path:
    d = good(root)
    write_shard(d / "fineweb_val_000000.bin", learnable_tokens(100))  # fewer than TRAIN_SEQ_LEN + 1 = 129
    return d


# name: (script, env overrides, data builder, substrings the stderr line must contain)
# "{data}" / "{root}" in a substring or an env value stand for the case's data directory / working directory.
CASES = {
    "seed_not_a_number": ("train_gpt", dict(SEED="abc"), good, ["SEED", "abc"]),
    "float_not_a_number": ("train_gpt_gdn", dict(MATRIX_LR="fast"), good, ["MATRIX_LR"]),
    "lr_nan": ("train_gpt", dict(SCALAR_LR="nan"), good, ["SCALAR_LR"]),
    "seq_len_zero": ("train_gpt_gdn", dict(TRAIN_SEQ_LEN="0"), good, ["TRAIN_SEQ_LEN"]),
    "momentum_above_one": ("train_gpt", dict(MUON_MOMENTUM="2"), good, ["MUON_MOMENTUM"]),
    "memory_budget_above_one": ("train_gpt_gdn", dict(COMPILE_MEMORY_BUDGET="1.5"), good, ["COMPILE_MEMORY_BUDGET"]),
    "cuda_graphs_on_cpu": ("train_gpt", dict(CUDA_GRAPHS="1"), good, ["CUDA_GRAPHS=1", "CUDA", "device:cpu"]),
    "cuda_graphs_unknown": ("train_gpt_gdn", dict(CUDA_GRAPHS="yes"), good, ["CUDA_GRAPHS"]),
    "batch_not_divisible": ("train_gpt", dict(TRAIN_BATCH_TOKENS="5000"), good, ["TRAIN_BATCH_TOKENS", "1024"]),
    "val_batch_too_small": ("train_gpt", dict(VAL_BATCH_SIZE="512"), good, ["VAL_BATCH_SIZE"]),
    "kv_heads_not_divisor": ("train_gpt", dict(NUM_KV_HEADS="3"), good, ["NUM_KV_HEADS"]),
    "world_size_3": ("train_gpt", dict(RANK="0", WORLD_SIZE="3", LOCAL_RANK="0"), good, ["WORLD_SIZE"]),
    "no_train_shards": ("train_gpt", {}, only_val, ["DATA_PATH", "train", "{data}"]),
    "no_val_shards": ("train_gpt_gdn", {}, only_train, ["DATA_PATH", "val", "{data}"]),
    "train_shard_bad_magic": ("train_gpt", {}, bad_magic_second_train,
                              ["{data}/fineweb_train_000001.bin", "magic"]),
    "train_shard_bad_size": ("train_gpt_gdn", {}, bad_size_train, ["{data}/fineweb_train_000001.bin", "bytes"]),
    "val_shard_bad_version": ("train_gpt", {}, bad_version_val, ["{data}/fineweb_val_000000.bin", "version"]),
    "val_shorter_than_a_sequence": ("train_gpt", {}, short_val, ["val", "TRAIN_SEQ_LEN=128"]),
    "tokenizer_missing": ("train_gpt", dict(TOKENIZER_PATH="{root}/nope.model"), good,
                          ["TOKENIZER_PATH", "{root}/nope.model"]),
    "tokenizer_not_sentencepiece": ("train_gpt_gdn", dict(TOKENIZER_PATH="{data}/fineweb_val_000000.bin"), good,
                                    ["TOKENIZER_PATH", "SentencePiece"]),
    "vocab_size_mismatch": ("train_gpt", dict(VOCAB_SIZE="2048"), good, ["VOCAB_SIZE", "1024"]),
    "gdn_layers_out_of_range": ("train_gpt_gdn", dict(GDN_LAYERS="0,4"), good, ["GDN_LAYERS", "NUM_LAYERS=4"]),
    "gdn_layers_garbage": ("train_gpt_gdn", dict(GDN_LAYERS="garbage"), good, ["GDN_LAYERS", "garbage"]),
    "gdn_layers_repeated": ("train_gpt_gdn", dict(GDN_LAYERS="1,1"), good, ["GDN_LAYERS"]),
    "gdn_impl_fla_without_cuda": ("train_gpt_gdn", dict(GDN_IMPL="fla"), good, ["GDN_IMPL=fla", "CUDA"]),
    "gdn_impl_unknown": ("train_gpt_gdn", dict(GDN_IMPL="triton"), good, ["GDN_IMPL"]),
    "gdn_save_state_without_fla": ("train_gpt_gdn", dict(GDN_SAVE_STATE="1"), good,
                                   ["GDN_SAVE_STATE=1", "FLA", "GDN_IMPL=auto", "GDN_SAVE_STATE=0"]),
    "gdn_save_state_unknown": ("train_gpt_gdn", dict(GDN_SAVE_STATE="yes"), good, ["GDN_SAVE_STATE"]),
    "gdn_save_wv_without_fla": ("train_gpt_gdn", dict(GDN_SAVE_WV="1"), good,
                                ["GDN_SAVE_WV=1", "state-saving op", "GDN_SAVE_WV=0 or auto"]),
    "gdn_state_chain_without_fla": ("train_gpt_gdn", dict(GDN_STATE_CHAIN="1"), good,
                                    ["GDN_STATE_CHAIN=1", "state-saving op", "GDN_STATE_CHAIN=0"]),
    "gdn_state_chain_unknown": ("train_gpt_gdn", dict(GDN_STATE_CHAIN="yes"), good, ["GDN_STATE_CHAIN"]),
    "gdn_chain_segment_without_chain": ("train_gpt_gdn", dict(GDN_CHAIN_SEGMENT="16"), good,
                                        ["GDN_CHAIN_SEGMENT=16", "GDN_STATE_CHAIN=auto",
                                         "GDN_CHAIN_SEGMENT=auto or 0"]),
    "gdn_chain_segment_negative": ("train_gpt_gdn", dict(GDN_CHAIN_SEGMENT="-1"), good,
                                   ["GDN_CHAIN_SEGMENT=-1", "auto or an integer >= 0"]),
    "gdn_chain_segment_word": ("train_gpt", dict(GDN_CHAIN_SEGMENT="many"), good,
                               ["GDN_CHAIN_SEGMENT='many'", "expected auto or an integer"]),
    "gdn_wy_bwd_unknown": ("train_gpt", dict(GDN_WY_BWD="yes"), good, ["GDN_WY_BWD", "yes"]),
    "gdn_dqkwg_unknown": ("train_gpt", dict(GDN_DQKWG="2"), good, ["GDN_DQKWG", "2"]),
    "gdn_fwd_o_unknown": ("train_gpt", dict(GDN_FWD_O="on"), good, ["GDN_FWD_O", "on"]),
    "gdn_fwd_o_without_state_op": ("train_gpt_gdn", dict(GDN_FWD_O="1"), good,
                                   ["GDN_FWD_O=1: needs the state-saving op", "use GDN_FWD_O=0"]),
    "gdn_dqkwg_without_state_op": ("train_gpt_gdn", dict(GDN_DQKWG="1"), good,
                                   ["GDN_DQKWG=1: needs the state-saving op", "use GDN_DQKWG=0"]),
    "gdn_wy_bwd_without_state_op": ("train_gpt_gdn", dict(GDN_WY_BWD="1"), good,
                                    ["GDN_WY_BWD=1: needs the state-saving op", "use GDN_WY_BWD=0"]),
    "mlp_recompute_unknown": ("train_gpt", dict(MLP_RECOMPUTE="yes"), good, ["MLP_RECOMPUTE"]),
    "mlp_recompute_layers_above_num_layers": ("train_gpt_gdn", dict(MLP_RECOMPUTE_LAYERS="5"), good,
                                              ["MLP_RECOMPUTE_LAYERS=5", "[1, 4]"]),
    "gdn_save_wv_unknown": ("train_gpt_gdn", dict(GDN_SAVE_WV="yes"), good, ["GDN_SAVE_WV"]),
    "step_overlap_two_processes": ("train_gpt_gdn", dict(STEP_OVERLAP="1", RANK="0", WORLD_SIZE="2", LOCAL_RANK="0"),
                                   good, ["STEP_OVERLAP=1", "one process", "WORLD_SIZE=2"]),
    "step_overlap_unknown": ("train_gpt", dict(STEP_OVERLAP="on"), good, ["STEP_OVERLAP"]),
    "gdn_layers_on_baseline": ("train_gpt", dict(GDN_LAYERS="0,1"), good, ["GDN_LAYERS", "train_gpt_gdn.py"]),
}


SUBPROCESS_CASES = ["seed_not_a_number", "batch_not_divisible", "world_size_3", "train_shard_bad_size",
                    "tokenizer_not_sentencepiece", "gdn_impl_fla_without_cuda", "gdn_layers_on_baseline"]


def prepare(name: str, root: Path) -> tuple[str, dict[str, str], Path, list[str]]:
    script, env, builder, expected = CASES[name]
    root.mkdir(parents=True, exist_ok=True)
    data = builder(root)
    env = {k: v.format(data=data, root=root) for k, v in env.items()}
    full = script_env(script, data, RUN_ID="must_not_exist", **env)
    return script, full, data, [x.format(data=data, root=root) for x in expected]


def assert_nothing_started(root: Path) -> None:
    assert not (root / "logs").exists()
    assert not list(root.rglob("final_model*"))


@pytest.mark.parametrize("name", list(CASES))
def test_main_raises_config_error(clean_env, tmp_path, name):
    """In-process: main() raises ConfigError naming the culprit, before creating the log file."""
    script, env, _, expected = prepare(name, tmp_path)
    for k, v in env.items():
        clean_env.setenv(k, v)
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "")
    clean_env.chdir(tmp_path)
    mod = load_script(script)
    with pytest.raises(mod.ConfigError) as e:
        mod.main()
    msg = str(e.value)
    assert "\n" not in msg
    for x in expected:
        assert x in msg, (x, msg)
    assert_nothing_started(tmp_path)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    base = tmp_path_factory.mktemp("config_errors")

    def run(name):
        root = base / name
        script, env, _, expected = prepare(name, root)
        return name, root, expected, run_script(script, env, root, timeout=120)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return {name: (root, expected, proc) for name, root, expected, proc in pool.map(run, SUBPROCESS_CASES)}


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_cli_fails_fast_with_one_line(results, name):
    """As a program: non-zero exit, one 'error: ...' line on stderr naming the culprit, no traceback."""
    root, expected, proc = results[name]
    detail = f"rc={proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}"
    assert proc.returncode != 0, detail
    assert "Traceback" not in proc.stderr, detail
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), detail
    for s in expected:
        assert s in lines[0], (s, lines[0])
    assert_nothing_started(root)
    assert "train_loss" not in proc.stdout and "warmup_step" not in proc.stdout
