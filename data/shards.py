"""Token shard files: the on-disk format shared by the FineWeb and pydocs datasets.

A shard is a header of 256 little-endian int32 followed by the tokens:

    header[0] = 20240520   magic
    header[1] = 1          version
    header[2] = count      number of tokens that follow
    header[3:] = 0         reserved

then ``count`` little-endian uint16 tokens. The file size must be exactly
``1024 + 2 * count`` bytes; anything else is a truncated or corrupt file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4  # 1024
TOKEN_BYTES = 2
MAX_TOKENS = 2**31 - 1  # the count is stored in an int32

__all__ = [
    "MAGIC",
    "VERSION",
    "HEADER_INTS",
    "HEADER_BYTES",
    "write_shard",
    "read_header",
    "read_shard",
    "shard_is_complete",
    "expected_size",
]


def expected_size(count: int) -> int:
    """Size in bytes of a shard holding ``count`` tokens."""
    return HEADER_BYTES + TOKEN_BYTES * int(count)


def write_shard(path, tokens) -> int:
    """Write ``tokens`` (1-D integers in [0, 65535]) as a shard at ``path``.

    The data goes to a temporary file in the same folder which is then renamed
    over ``path`` with ``os.replace``, so a crash never leaves a half-written
    file under the final name. Returns the number of tokens written.
    """
    path = Path(path)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{path}: tokens must be integers, got dtype {arr.dtype}")
    if arr.size > MAX_TOKENS:
        raise ValueError(f"{path}: {arr.size} tokens do not fit a shard (at most {MAX_TOKENS})")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 0xFFFF):
        raise ValueError(
            f"{path}: token ids must lie in [0, 65535], got [{int(arr.min())}, {int(arr.max())}]"
        )
    data = arr.astype("<u2", copy=False)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = MAGIC
    header[1] = VERSION
    header[2] = data.size

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(data.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    return int(data.size)


def read_header(path) -> int:
    """Check the header of the shard at ``path`` against the file size; return the token count.

    Raises ValueError, naming the file and what was expected, for a file shorter
    than the header, a bad magic number, an unknown version, a negative count or
    a file size that disagrees with the count in the header.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ValueError(
            f"{path}: file is {size} bytes, shorter than the {HEADER_BYTES}-byte shard header "
            f"(truncated or not a shard)"
        )
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
    magic, version, count = int(header[0]), int(header[1]), int(header[2])
    if magic != MAGIC:
        raise ValueError(f"{path}: bad magic number {magic}, expected {MAGIC} (not a token shard?)")
    if version != VERSION:
        raise ValueError(f"{path}: unsupported shard version {version}, expected {VERSION}")
    if count < 0:
        raise ValueError(f"{path}: header holds a negative token count {count}")
    want = expected_size(count)
    if size != want:
        raise ValueError(
            f"{path}: header says {count} tokens, so the file should be {want} bytes "
            f"(1024 + 2*{count}), but it is {size} bytes (truncated or corrupt)"
        )
    return count


def read_shard(path, mmap: bool = False) -> np.ndarray:
    """Return the tokens of the shard at ``path`` as a uint16 array (validated first).

    With ``mmap=True`` the array is a read-only memory map instead of a copy in memory.
    """
    count = read_header(path)
    if mmap:
        if count == 0:
            return np.zeros(0, dtype=np.uint16)
        return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        tokens = np.fromfile(f, dtype="<u2", count=count)
    if tokens.size != count:  # the file shrank between the check and the read
        raise ValueError(f"{path}: expected {count} tokens but could read only {tokens.size}")
    return tokens.astype(np.uint16, copy=False)


def shard_is_complete(path) -> bool:
    """True if ``path`` exists and is a valid shard whose size matches its header."""
    try:
        read_header(path)
        return True
    except (OSError, ValueError):
        return False
