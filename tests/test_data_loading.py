"""Shard reading and validation, the endless train stream, the distributed loader and the val split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_shard, load_script

BASE = load_script("train_gpt")
ConfigError = BASE.ConfigError


def test_generated_dataset_is_valid(dataset):
    """The conftest's shards are what the scripts expect: the main() globs find them and every header checks."""
    train = BASE.list_shards(str(dataset.path / "*_train_*.bin"), "train")
    assert train == [str(p) for p in dataset.train_files]
    assert [BASE.shard_token_count(f) for f in train] == [40_000, 30_000]
    val = BASE.load_validation_tokens(str(dataset.path / "*_val_*.bin"), 128, 0)
    assert val.numel() == (5999 // 128) * 128 + 1 and int(val.min()) >= 4  # no control/unknown ids


def test_good_shard(tmp_path):
    tokens = np.arange(0, 65536, 7, dtype=np.int64)  # up to 65534: the whole uint16 range is read unsigned
    path = write_shard(tmp_path / "fineweb_train_000000.bin", tokens)
    assert path.stat().st_size == 1024 + 2 * tokens.size
    assert BASE.shard_token_count(path) == tokens.size
    got = BASE.load_shard(path)
    assert got.dtype == torch.int32 and torch.equal(got, torch.from_numpy(tokens).int())
    assert BASE.load_shard(str(path)).numel() == tokens.size  # str paths too


def test_empty_shard(tmp_path):
    path = write_shard(tmp_path / "e.bin", np.zeros(0, dtype=np.uint16))
    assert BASE.shard_token_count(path) == 0 and BASE.load_shard(path).numel() == 0


def test_header_layout_is_little_endian(tmp_path):
    path = tmp_path / "manual.bin"
    header = bytearray(1024)
    header[0:4] = (20240520).to_bytes(4, "little")
    header[4:8] = (1).to_bytes(4, "little")
    header[8:12] = (3).to_bytes(4, "little")
    path.write_bytes(bytes(header) + (258).to_bytes(2, "little") + (1).to_bytes(2, "little") + b"\xff\xff")
    assert BASE.load_shard(path).tolist() == [258, 1, 65535]


@pytest.mark.parametrize("kind,match", [
    ("magic", "magic"),
    ("version", "version"),
    ("truncated_header", "header"),
    ("count_too_big", "tokens"),
    ("count_too_small", "tokens"),
    ("truncated_tokens", "tokens"),
    ("negative_count", "tokens"),
])
def test_bad_shards(tmp_path, kind, match):
    path = tmp_path / "fineweb_train_000003.bin"
    tokens = np.arange(100)
    if kind == "magic":
        write_shard(path, tokens, magic=12345)
    elif kind == "version":
        write_shard(path, tokens, version=2)
    elif kind == "truncated_header":
        path.write_bytes(write_shard(path, tokens).read_bytes()[:500])
    elif kind == "count_too_big":
        write_shard(path, tokens, count=101)
    elif kind == "count_too_small":
        write_shard(path, tokens, count=99)
    elif kind == "truncated_tokens":
        path.write_bytes(write_shard(path, tokens).read_bytes()[:-1])
    elif kind == "negative_count":
        write_shard(path, tokens, count=-1)
    for fn in (BASE.shard_token_count, BASE.load_shard):
        with pytest.raises(ConfigError, match=match) as e:
            fn(path)
        assert str(path) in str(e.value)  # the message names the file
        assert "\n" not in str(e.value)


def test_list_shards(tmp_path):
    for name in ("x_train_000002.bin", "x_train_000000.bin", "x_train_000001.bin", "x_val_000000.bin"):
        write_shard(tmp_path / name, np.arange(3))
    got = BASE.list_shards(str(tmp_path / "*_train_*.bin"), "train")
    assert [p.rsplit("/", 1)[-1] for p in got] == ["x_train_000000.bin", "x_train_000001.bin", "x_train_000002.bin"]
    with pytest.raises(ConfigError, match="DATA_PATH") as e:
        BASE.list_shards(str(tmp_path / "nothing" / "*_train_*.bin"), "train")
    assert "train" in str(e.value) and str(tmp_path / "nothing") in str(e.value)


def shards(tmp_path, sizes, offset=0):
    """Shards whose tokens are their global positions (mod 65536): a stream is easy to check."""
    files, start = [], offset
    for i, n in enumerate(sizes):
        files.append(str(write_shard(tmp_path / f"d_train_{i:06d}.bin", (np.arange(start, start + n)) % 65536)))
        start += n
    return files, np.arange(offset, start) % 65536


def test_token_stream_wraps_around(tmp_path):
    files, all_tokens = shards(tmp_path, [10, 7, 5])
    stream = BASE.TokenStream(files)
    got = [stream.take(n) for n in (4, 8, 9, 1, 30, 22)]
    flat = torch.cat(got).numpy()
    expected = np.tile(all_tokens, 4)[: flat.size]
    assert [t.numel() for t in got] == [4, 8, 9, 1, 30, 22]
    assert np.array_equal(flat, expected)
    assert (stream.file_idx, stream.pos) == (0, 8)  # 74 tokens = 3 passes over 22 tokens + 8 of shard 0


def test_token_stream_single_take_spans_every_shard(tmp_path):
    files, all_tokens = shards(tmp_path, [3, 4, 2])
    stream = BASE.TokenStream(files)
    assert stream.take(20).tolist() == np.tile(all_tokens, 3)[:20].tolist()


def test_loader_world_sizes_see_the_same_spans(tmp_path):
    """Rank r of N takes span r of each group of N; one process with 8 micro-steps sees the same spans in
    order, so the global batch (and its gradient) is the same for any world size."""
    files, _ = shards(tmp_path, [5000, 3001, 2999])
    cpu = torch.device("cpu")
    global_tokens, seq = 2048, 32
    single = BASE.DistributedTokenLoader(files, 0, 1, cpu)
    ranks2 = [BASE.DistributedTokenLoader(files, r, 2, cpu) for r in range(2)]
    ranks4 = [BASE.DistributedTokenLoader(files, r, 4, cpu) for r in range(4)]
    for step in range(7):  # 7 * 8 * 257 tokens: wraps around the 11000-token stream
        spans1 = [single.next_batch(global_tokens, seq, 8) for _ in range(8)]
        spans2 = [ld.next_batch(global_tokens, seq, 4) for _ in range(4) for ld in ranks2]
        spans2 = [spans2[2 * m + r] for m in range(4) for r in range(2)]
        spans4 = [ld.next_batch(global_tokens, seq, 2) for _ in range(2) for ld in ranks4]
        for (x1, y1), (x2, y2), (x4, y4) in zip(spans1, spans2, spans4):
            assert x1.shape == y1.shape == (global_tokens // 8 // seq, seq) and x1.dtype == torch.int64
            assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(x1, x4) and torch.equal(y1, y4)
            assert torch.equal(x1.reshape(-1)[1:], y1.reshape(-1)[:-1])  # y is x shifted by one


def test_loader_spans_are_contiguous_and_reset(tmp_path):
    files, all_tokens = shards(tmp_path, [1000, 1000])
    ld = BASE.DistributedTokenLoader(files, 1, 2, torch.device("cpu"))
    x, y = ld.next_batch(1024, 16, 4)  # local 128 tokens, span 129; rank 1 gets tokens 129..257
    assert x.shape == (8, 16)
    assert torch.equal(x.reshape(-1), torch.arange(129, 257)) and torch.equal(y.reshape(-1), torch.arange(130, 258))
    x2, _ = ld.next_batch(1024, 16, 4)
    assert x2.reshape(-1)[0].item() == 258 + 129
    ld.reset()
    x3, _ = ld.next_batch(1024, 16, 4)
    assert torch.equal(x3, x)


def test_validation_tokens(tmp_path):
    write_shard(tmp_path / "d_val_000001.bin", np.arange(1000, 1050))
    write_shard(tmp_path / "d_val_000000.bin", np.arange(0, 100))
    pattern = str(tmp_path / "*_val_*.bin")
    val = BASE.load_validation_tokens(pattern, 16, 0)  # 150 tokens: 9 sequences of 16, + 1
    assert val.numel() == 9 * 16 + 1
    assert val.tolist() == (list(range(100)) + list(range(1000, 1045)))  # shards in sorted order
    capped = BASE.load_validation_tokens(pattern, 16, 40)  # VAL_MAX_TOKENS=40: 2 sequences + 1
    assert capped.tolist() == list(range(33))
    exact = BASE.load_validation_tokens(pattern, 16, 32)
    assert exact.tolist() == list(range(33))
    with pytest.raises(ConfigError, match="TRAIN_SEQ_LEN=200"):
        BASE.load_validation_tokens(pattern, 200, 0)
    with pytest.raises(ConfigError, match="TRAIN_SEQ_LEN=16"):
        BASE.load_validation_tokens(pattern, 16, 10)
    with pytest.raises(ConfigError, match="DATA_PATH"):
        BASE.load_validation_tokens(str(tmp_path / "*_nothing_*.bin"), 16, 0)
