"""Tests of the data tools: shard format, FineWeb fetcher (with a fake downloader), pydocs builder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data import build_pydocs_dataset as bpd  # noqa: E402
from data import fetch_fineweb as ff  # noqa: E402
from data.shards import (  # noqa: E402
    HEADER_BYTES,
    MAGIC,
    read_header,
    read_shard,
    shard_is_complete,
    write_shard,
)

REAL_TOKENIZER = REPO.parent / "shared" / "data" / "fineweb_1024_bpe.model"
SMALL_CHARS = 300_000


# ------------------------------------------------------------------------------------------------
# shards
# ------------------------------------------------------------------------------------------------

def test_shard_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 65536, size=12_345, dtype=np.int64)
    path = tmp_path / "sub" / "x_train_000000.bin"
    assert write_shard(path, tokens) == tokens.size
    assert path.stat().st_size == HEADER_BYTES + 2 * tokens.size
    assert read_header(path) == tokens.size
    got = read_shard(path)
    assert got.dtype == np.uint16 and np.array_equal(got, tokens)
    assert np.array_equal(np.asarray(read_shard(path, mmap=True)), tokens)
    assert shard_is_complete(path)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == MAGIC and header[1] == 1 and header[2] == tokens.size and not header[3:].any()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_empty_shard(tmp_path):
    path = tmp_path / "e.bin"
    write_shard(path, np.zeros(0, dtype=np.uint16))
    assert read_header(path) == 0 and read_shard(path).size == 0 and read_shard(path, mmap=True).size == 0


def test_write_shard_rejects_bad_tokens(tmp_path):
    with pytest.raises(ValueError, match="65535"):
        write_shard(tmp_path / "a.bin", [1, 70000])
    with pytest.raises(ValueError):
        write_shard(tmp_path / "b.bin", [-1, 2])
    with pytest.raises(ValueError):
        write_shard(tmp_path / "c.bin", np.ones((2, 2), dtype=np.int32))
    assert list(tmp_path.iterdir()) == []


def _good_shard(path, n=100):
    write_shard(path, np.arange(n))
    return path


def _with_header_int(path, index: int, value: int):
    """Overwrite header int number `index` (0: magic, 1: version, 2: token count) of a shard."""
    raw = bytearray(path.read_bytes())
    raw[4 * index:4 * index + 4] = np.array([value], dtype="<i4").tobytes()
    path.write_bytes(bytes(raw))
    return path


def test_bad_magic(tmp_path):
    path = _with_header_int(_good_shard(tmp_path / "badmagic.bin"), 0, 12345)
    with pytest.raises(ValueError, match=r"badmagic\.bin.*magic.*20240520"):
        read_header(path)
    with pytest.raises(ValueError, match="badmagic.bin"):
        read_shard(path)
    assert not shard_is_complete(path)


def test_bad_version(tmp_path):
    path = _with_header_int(_good_shard(tmp_path / "badversion.bin"), 1, 7)
    with pytest.raises(ValueError, match=r"badversion\.bin.*version 7"):
        read_header(path)


def test_truncated(tmp_path):
    path = _good_shard(tmp_path / "truncated.bin")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"truncated\.bin.*100 tokens.*1224 bytes.*1214 bytes"):
        read_header(path)
    assert not shard_is_complete(path)


def test_shorter_than_header(tmp_path):
    path = tmp_path / "tiny.bin"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match=r"tiny\.bin.*shorter than the 1024-byte"):
        read_header(path)


def test_wrong_count(tmp_path):
    path = _good_shard(tmp_path / "wrongcount.bin")
    raw = bytearray(path.read_bytes())
    raw[8:12] = np.array([99], dtype="<i4").tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"wrongcount\.bin.*99 tokens"):
        read_header(path)
    assert not shard_is_complete(path)
    assert not shard_is_complete(tmp_path / "missing.bin")


# ------------------------------------------------------------------------------------------------
# pydocs builder (a small build, shared by the builder and fetcher tests)
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def small_builds(tmp_path_factory):
    """Two small builds: one in-process (2 workers), one through the CLI (1 worker)."""
    a = tmp_path_factory.mktemp("build_a")
    b = tmp_path_factory.mktemp("build_b")
    t0 = time.time()
    manifest = bpd.build(a, max_chars=SMALL_CHARS, workers=2, log=lambda s: None)
    seconds = time.time() - t0
    r = subprocess.run(
        [sys.executable, "data/build_pydocs_dataset.py", "--out", str(b), "--max-chars", str(SMALL_CHARS),
         "--workers", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return a, b, manifest, seconds


def test_builder_outputs(small_builds):
    import sentencepiece as spm

    out, _, manifest, seconds = small_builds
    assert seconds < 60
    model_path, data_dir, manifest_path = bpd.output_paths(out)
    assert model_path == out / "tokenizers" / "pydocs_1024_bpe.model"
    assert data_dir == out / "datasets" / "pydocs_sp1024"
    assert json.loads(manifest_path.read_text())["counts"] == manifest["counts"]

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    assert sp.vocab_size() == 1024
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert not any(sp.is_byte(i) for i in range(sp.vocab_size()))  # no byte fallback
    text = "The quick brown fox jumps over the lazy dog and returns 12345 values."
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert sp.encode("12345", out_type=str) == ["1", "2", "3", "4", "5"]  # split_digits
    assert not sp.encode("Hello", out_type=str)[0].startswith("\u2581")  # no dummy prefix

    settings = bpd.read_model_settings(model_path)
    for key, want in bpd.TRAINER_SETTINGS.items():
        assert settings[key] == want, key
    assert settings["pieces"] == 1024

    train = read_shard(data_dir / "pydocs_train_000000.bin")
    val = read_shard(data_dir / "pydocs_val_000000.bin")
    assert train.size == manifest["counts"]["train_tokens"] and val.size == manifest["counts"]["val_tokens"]
    assert train[0] == 1 and val[0] == 1  # every document starts with BOS
    n_bos = int((train == 1).sum() + (val == 1).sum())
    assert n_bos == manifest["counts"]["documents"]
    assert int(max(train.max(), val.max())) < 1024
    assert not (train == 0).any()  # no padding in the stream
    assert val.size >= 0.2 * (train.size + val.size)  # small build: val minimum = 25% of chars
    assert not list(data_dir.glob(".*"))  # no temp files


def test_builder_is_deterministic(small_builds):
    a, b, _, _ = small_builds
    for rel in ("tokenizers/pydocs_1024_bpe.model",
                "datasets/pydocs_sp1024/pydocs_train_000000.bin",
                "datasets/pydocs_sp1024/pydocs_val_000000.bin"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_builder_skips_complete_build(small_builds):
    out, _, _, _ = small_builds
    shard = out / "datasets" / "pydocs_sp1024" / "pydocs_train_000000.bin"
    before = shard.stat().st_mtime_ns
    msgs = []
    bpd.build(out, max_chars=SMALL_CHARS, log=msgs.append)
    assert shard.stat().st_mtime_ns == before
    assert "already built" in msgs[0]


def test_builder_rebuilds_damaged_build(tmp_path):
    out = tmp_path / "d"
    bpd.build(out, max_chars=50_000, min_val_tokens=1000, log=lambda s: None)
    shard = out / "datasets" / "pydocs_sp1024" / "pydocs_train_000000.bin"
    good = shard.read_bytes()
    shard.write_bytes(good[:-2])
    msgs = []
    bpd.build(out, max_chars=50_000, min_val_tokens=1000, log=msgs.append)
    assert "rebuilding" in msgs[0]
    assert shard.read_bytes() == good


def test_several_train_shards(tmp_path):
    out = tmp_path / "s"
    m = bpd.build(out, max_chars=50_000, min_val_tokens=1000, shard_tokens=4000, log=lambda s: None)
    files = sorted((out / "datasets" / "pydocs_sp1024").glob("pydocs_train_*.bin"))
    assert len(files) == len(m["shards"]["train"]) > 1
    assert files[0].name == "pydocs_train_000000.bin"
    assert sum(read_header(f) for f in files) == m["counts"]["train_tokens"]
    assert all(read_header(f) == 4000 for f in files[:-1])


def test_prose_filter():
    text = (
        "Return the sum of the values.\n\n"
        "Example::\n\n    x = f(1, 2)\n    y = g(x)\n\n"
        "More words about what this function does.\n\n"
        ">>> f(1)\n2\n\n"
        ".. code-block:: python\n\n    a = b\n\n"
        ".. note:: This is kept as prose.\n\n"
        "stmt ::= \"x\" | \"y\"\n"
    )
    pars = bpd.prose_paragraphs(text)
    assert pars == [
        "Return the sum of the values.",
        "Example:",
        "More words about what this function does.",
        "Note: This is kept as prose.",
    ]


@pytest.mark.skipif(not REAL_TOKENIZER.exists(), reason="real FineWeb tokenizer copy not available")
def test_trainer_settings_match_real_tokenizer():
    real = bpd.read_model_settings(REAL_TOKENIZER)
    for key, want in bpd.TRAINER_SETTINGS.items():
        assert real[key] == want, key


# ------------------------------------------------------------------------------------------------
# FineWeb fetcher with a fake downloader
# ------------------------------------------------------------------------------------------------

class FakeHub:
    """Writes what the Hub would serve; counts calls; can serve a broken shard."""

    def __init__(self, model_bytes: bytes, bad: str | None = None):
        self.model_bytes = model_bytes
        self.bad = bad
        self.calls: list[str] = []

    def __call__(self, remote_path: str, local_path: Path) -> None:
        self.calls.append(remote_path)
        local_path = Path(local_path)
        if remote_path.endswith(".model"):
            local_path.write_bytes(self.model_bytes)
        elif remote_path.endswith(".vocab"):
            local_path.write_text("<pad>\t0\n<s>\t0\n")
        else:
            n = 1000 + len(self.calls)
            write_shard(local_path, np.arange(n) % 1024)
            if self.bad and remote_path.endswith(self.bad):
                local_path.write_bytes(local_path.read_bytes()[:-6])


@pytest.fixture
def model_bytes(small_builds):
    return (small_builds[0] / "tokenizers" / "pydocs_1024_bpe.model").read_bytes()


def _no_probe():
    pass


def test_fetch_layout_and_skip(tmp_path, model_bytes):
    hub = FakeHub(model_bytes)
    s = ff.fetch(tmp_path, train_shards=2, download=hub, probe=_no_probe, log=lambda m: None)
    want_remote = [
        "datasets/tokenizers/fineweb_1024_bpe.model",
        "datasets/tokenizers/fineweb_1024_bpe.vocab",
        "datasets/datasets/fineweb10B_sp1024/fineweb_val_000000.bin",
        "datasets/datasets/fineweb10B_sp1024/fineweb_train_000000.bin",
        "datasets/datasets/fineweb10B_sp1024/fineweb_train_000001.bin",
    ]
    assert hub.calls == want_remote
    for remote in want_remote:
        local = tmp_path / remote[len("datasets/"):]
        assert local.is_file(), local
    d = tmp_path / "datasets" / "fineweb10B_sp1024"
    assert sorted(p.name for p in d.iterdir()) == [
        "fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin"]
    assert s["downloaded"] == 5 and s["skipped"] == 0
    assert s["train_tokens"] == read_header(d / "fineweb_train_000000.bin") + read_header(d / "fineweb_train_000001.bin")

    # second run: everything complete, no download and no network probe
    hub2 = FakeHub(model_bytes)

    def probe_must_not_run():
        raise AssertionError("probe called although nothing is missing")

    s2 = ff.fetch(tmp_path, train_shards=2, download=hub2, probe=probe_must_not_run, log=lambda m: None)
    assert hub2.calls == [] and s2["skipped"] == 5

    # a damaged shard and one more requested shard are (re)downloaded, nothing else
    (d / "fineweb_train_000001.bin").write_bytes((d / "fineweb_train_000001.bin").read_bytes()[:-2])
    hub3 = FakeHub(model_bytes)
    ff.fetch(tmp_path, train_shards=3, download=hub3, probe=_no_probe, log=lambda m: None)
    assert hub3.calls == [
        "datasets/datasets/fineweb10B_sp1024/fineweb_train_000001.bin",
        "datasets/datasets/fineweb10B_sp1024/fineweb_train_000002.bin",
    ]
    assert all(shard_is_complete(p) for p in d.iterdir())


def test_fetch_rejects_bad_shard(tmp_path, model_bytes, capsys):
    hub = FakeHub(model_bytes, bad="fineweb_train_000000.bin")
    with pytest.raises(ff.FetchError, match=r"fineweb_train_000000\.bin.*invalid.*deleted"):
        ff.fetch(tmp_path, train_shards=1, download=hub, probe=_no_probe, log=lambda m: None)
    d = tmp_path / "datasets" / "fineweb10B_sp1024"
    assert not (d / "fineweb_train_000000.bin").exists()
    assert not list(d.glob(".*"))  # the partial download is gone too
    assert shard_is_complete(d / "fineweb_val_000000.bin")

    rc = ff.main(["--out", str(tmp_path), "--train-shards", "1"], download=FakeHub(model_bytes, bad="000000.bin"),
                 probe=_no_probe)
    assert rc == 1
    assert "invalid" in capsys.readouterr().err


def test_fetch_rejects_bad_tokenizer(tmp_path):
    hub = FakeHub(b"not a sentencepiece model")
    with pytest.raises(ff.FetchError, match="tokenizer"):
        ff.fetch(tmp_path, train_shards=0, download=hub, probe=_no_probe, log=lambda m: None)
    assert not (tmp_path / "tokenizers" / "fineweb_1024_bpe.model").exists()


def test_fetch_download_error(tmp_path):
    def broken(remote, local):
        raise ConnectionError("connection reset")

    with pytest.raises(ff.FetchError, match="connection reset"):
        ff.fetch(tmp_path, train_shards=0, download=broken, probe=_no_probe, log=lambda m: None)


def test_offline_probe_fails_fast_via_monkeypatch(tmp_path, capsys):
    def offline():
        raise ff.HubUnreachable("cannot reach huggingface.co:443 (simulated)")

    called = []
    t0 = time.time()
    rc = ff.main(["--out", str(tmp_path)], download=lambda r, l: called.append(r), probe=offline)
    assert rc == 2 and called == [] and time.time() - t0 < 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unreachable" in err


def test_offline_env_fails_fast_cli(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    t0 = time.time()
    r = subprocess.run([sys.executable, "data/fetch_fineweb.py", "--out", str(tmp_path), "--train-shards", "1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert time.time() - t0 < 15
    assert len(r.stderr.strip().splitlines()) == 1 and "HF_HUB_OFFLINE" in r.stderr
    assert not (tmp_path / "datasets").exists()


def test_probe_refused_port_fails_fast(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t0 = time.time()
    with pytest.raises(ff.HubUnreachable, match="127.0.0.1:9"):
        ff.probe_hub(timeout=3)
    assert time.time() - t0 < 5


def test_default_shards_and_help():
    assert ff.DEFAULT_TRAIN_SHARDS == 3
    r = subprocess.run([sys.executable, "data/fetch_fineweb.py", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "231M" in r.stdout
    r = subprocess.run([sys.executable, "data/fetch_fineweb.py", "--train-shards", "196"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "195" in r.stderr
    r = subprocess.run([sys.executable, "data/build_pydocs_dataset.py", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--max-chars" in r.stdout
