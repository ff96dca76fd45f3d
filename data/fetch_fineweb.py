"""Download the FineWeb sp1024 shards and tokenizer from the Hugging Face Hub.

Source: the dataset repo ``willdepueoai/parameter-golf`` (repo_type="dataset"), folder ``datasets/``.
Local layout, under ``--out`` (default: this script's folder, i.e. ``data/``)::

    <out>/tokenizers/fineweb_1024_bpe.model (+ .vocab)
    <out>/datasets/fineweb10B_sp1024/fineweb_val_000000.bin
    <out>/datasets/fineweb10B_sp1024/fineweb_train_000000.bin ...

Files already present and complete are skipped (a shard is complete when its header agrees with its
size). Each new file is downloaded under a temporary name, checked, and only then renamed to its final
name; a shard whose header disagrees with its size is deleted and the run fails.

Exit codes: 0 done, 1 a download or check failed, 2 the Hub is unreachable or HF_HUB_OFFLINE is set
(this is detected in a few seconds, before any download starts).

The network part is injectable: ``fetch(..., download=f)`` takes any callable ``f(remote_path, local_path)``
that writes the file named by the repo path ``remote_path`` to ``local_path``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

if __package__ in (None, ""):  # run as `python3 data/fetch_fineweb.py`: make `data.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.shards import read_header, shard_is_complete  # noqa: E402

REPO_ID = "willdepueoai/parameter-golf"
REPO_TYPE = "dataset"
REMOTE_ROOT = "datasets"
DATASET_NAME = "fineweb10B_sp1024"
TOKENIZER_NAME = "fineweb_1024_bpe"
MAX_TRAIN_SHARDS = 195
SHARD_TOKENS = 100_000_000

# Default shard count: enough train tokens for the study's fastest 600 s run at 32k context
# (hybrid GDN, ~440 steps x 524,288 tokens per step = ~231M tokens) without wrapping around.
STEPS_32K = 440
BATCH_TOKENS_32K = 524_288
DEFAULT_TRAIN_SHARDS = math.ceil(STEPS_32K * BATCH_TOKENS_32K / SHARD_TOKENS)  # = 3

PROBE_TIMEOUT_S = 4.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_OFFLINE = 2

Downloader = Callable[[str, Path], None]


class HubUnreachable(RuntimeError):
    """The Hub cannot be reached (no network, or HF_HUB_OFFLINE is set)."""


class FetchError(RuntimeError):
    """A download failed or a downloaded file is not what it should be."""


def default_out_dir() -> Path:
    return Path(__file__).resolve().parent


def file_plan(train_shards: int) -> list[tuple[str, str]]:
    """(remote repo path, local path relative to --out) for every file to fetch, in order."""
    plan = []
    for ext in (".model", ".vocab"):
        rel = f"tokenizers/{TOKENIZER_NAME}{ext}"
        plan.append((f"{REMOTE_ROOT}/{rel}", rel))
    names = [f"fineweb_val_{0:06d}.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    for name in names:
        rel = f"datasets/{DATASET_NAME}/{name}"
        plan.append((f"{REMOTE_ROOT}/{rel}", rel))
    return plan


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _probe_target() -> tuple[str, int]:
    """Host and port a download would connect to first: the HTTPS proxy if one is set, else the Hub."""
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        proxy = os.environ.get(var)
        if proxy:
            p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
            if p.hostname:
                return p.hostname, p.port or (443 if p.scheme == "https" else 80)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    p = urlparse(endpoint)
    return p.hostname or "huggingface.co", p.port or (443 if p.scheme != "http" else 80)


def probe_hub(timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise HubUnreachable within about ``timeout`` seconds unless a TCP connection to the Hub opens.

    Name resolution cannot be given a timeout, so the whole probe runs in a daemon thread and is
    abandoned after ``timeout`` seconds.
    """
    if _env_true("HF_HUB_OFFLINE"):
        raise HubUnreachable("HF_HUB_OFFLINE is set, so the Hugging Face Hub may not be contacted")
    host, port = _probe_target()
    result: dict = {}

    def attempt():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    if result.get("ok"):
        return
    why = result.get("error") or f"no answer within {timeout:g} s"
    raise HubUnreachable(f"cannot reach {host}:{port} ({why})")


def hf_downloader(out_dir: Path, repo_id: str = REPO_ID, revision: Optional[str] = None) -> Downloader:
    """A downloader backed by huggingface_hub.hf_hub_download (staged under <out>/.hf_download)."""
    from huggingface_hub import hf_hub_download

    staging = Path(out_dir) / ".hf_download"

    def download(remote_path: str, local_path: Path) -> None:
        got = hf_hub_download(
            repo_id=repo_id,
            filename=remote_path,
            repo_type=REPO_TYPE,
            revision=revision,
            local_dir=staging,
        )
        os.replace(got, local_path)

    download.staging = staging  # type: ignore[attr-defined]
    return download


def _tokenizer_ok(path: Path, suffix: Optional[str] = None) -> tuple[bool, str]:
    """(usable, description) of a tokenizer file; ``suffix`` names its kind when ``path`` is a temp name."""
    try:
        size = path.stat().st_size
    except OSError:
        return False, "missing"
    if size == 0:
        return False, "empty file"
    if (suffix or path.suffix) == ".model":
        try:
            import sentencepiece as spm
        except ImportError:
            return True, f"{size} bytes"
        try:
            sp = spm.SentencePieceProcessor(model_file=str(path))
        except Exception as e:  # sentencepiece raises RuntimeError/OSError on a bad proto
            return False, f"sentencepiece cannot load it ({e})"
        return True, f"vocab {sp.vocab_size()}"
    return True, f"{size} bytes"


def _is_complete(path: Path) -> bool:
    if path.suffix == ".bin":
        return shard_is_complete(path)
    return _tokenizer_ok(path)[0]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def fetch(
    out_dir,
    train_shards: int = DEFAULT_TRAIN_SHARDS,
    download: Optional[Downloader] = None,
    probe: Optional[Callable[[], None]] = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Make sure the tokenizer, the val shard and ``train_shards`` train shards are under ``out_dir``.

    ``download(remote_path, local_path)`` fetches one file (default: from the Hub); ``probe()`` raises
    HubUnreachable when there is no network (default: probe_hub). Neither is called when every file is
    already present and complete. Returns a summary dict. Raises HubUnreachable or FetchError.
    """
    if not 0 <= train_shards <= MAX_TRAIN_SHARDS:
        raise ValueError(f"train_shards must be in [0, {MAX_TRAIN_SHARDS}], got {train_shards}")
    out_dir = Path(out_dir)
    plan = file_plan(train_shards)
    todo = []
    for remote, rel in plan:
        local = out_dir / rel
        if _is_complete(local):
            continue
        if local.exists():
            log(f"{rel}: present but incomplete or invalid; it will be downloaded again")
        todo.append((remote, rel))
    skipped = len(plan) - len(todo)
    log(f"{len(plan)} files wanted under {out_dir}: {skipped} already complete, {len(todo)} to download")

    if todo:
        (probe or probe_hub)()
        if download is None:
            download = hf_downloader(out_dir)

    t_all = time.time()
    fetched_bytes = 0
    for k, (remote, rel) in enumerate(todo, 1):
        local = out_dir / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(f".{local.name}.part")
        log(f"[{k}/{len(todo)}] {remote} -> {local}")
        t0 = time.time()
        try:
            download(remote, part)
        except HubUnreachable:
            raise
        except Exception as e:
            part.unlink(missing_ok=True)
            raise FetchError(f"download of {remote} failed: {type(e).__name__}: {e}") from e
        if not part.exists():
            raise FetchError(f"download of {remote} produced no file at {part}")
        if local.suffix == ".bin":
            try:
                count = read_header(part)
            except ValueError as e:
                part.unlink(missing_ok=True)
                raise FetchError(f"downloaded shard {rel} is invalid and was deleted: {e}") from e
            what = f"{count:,} tokens"
        else:
            ok, what = _tokenizer_ok(part, local.suffix)
            if not ok:
                part.unlink(missing_ok=True)
                raise FetchError(f"downloaded tokenizer file {rel} is invalid and was deleted: {what}")
        size = part.stat().st_size
        os.replace(part, local)
        fetched_bytes += size
        dt = max(time.time() - t0, 1e-9)
        log(f"[{k}/{len(todo)}]   ok: {what}, {_fmt_bytes(size)} in {dt:.1f} s ({_fmt_bytes(size / dt)}/s)")

    staging = getattr(download, "staging", None)
    if staging is not None and Path(staging).exists():
        shutil.rmtree(staging, ignore_errors=True)

    shard_dir = out_dir / "datasets" / DATASET_NAME
    train_tokens = sum(read_header(shard_dir / f"fineweb_train_{i:06d}.bin") for i in range(train_shards))
    val_tokens = read_header(shard_dir / "fineweb_val_000000.bin")
    summary = {
        "out_dir": str(out_dir),
        "downloaded": len(todo),
        "skipped": skipped,
        "downloaded_bytes": fetched_bytes,
        "train_shards": train_shards,
        "train_tokens": train_tokens,
        "val_tokens": val_tokens,
        "seconds": time.time() - t_all,
    }
    log(
        f"done: {train_shards} train shards ({train_tokens:,} tokens), val {val_tokens:,} tokens, "
        f"{len(todo)} files downloaded ({_fmt_bytes(fetched_bytes)}), {skipped} skipped"
    )
    return summary


def _shard_count(text: str) -> int:
    n = int(text)
    if not 0 <= n <= MAX_TRAIN_SHARDS:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_TRAIN_SHARDS}, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fetch_fineweb.py",
        description=(
            f"Download the FineWeb sp1024 tokenizer, val shard and train shards from the Hugging Face "
            f"Hub dataset {REPO_ID} into <out>/tokenizers and <out>/datasets/{DATASET_NAME}. "
            "Complete files are skipped. Exit code 2 (within seconds) when the Hub is unreachable."
        ),
    )
    p.add_argument(
        "--train-shards",
        type=_shard_count,
        default=DEFAULT_TRAIN_SHARDS,
        metavar="N",
        help=(
            f"number of 100M-token train shards, 0..{MAX_TRAIN_SHARDS} (default {DEFAULT_TRAIN_SHARDS}: "
            f"the study's fastest 600 s run at 32k context, the hybrid, does ~{STEPS_32K} steps x "
            f"{BATCH_TOKENS_32K:,} tokens = ~{STEPS_32K * BATCH_TOKENS_32K / 1e6:.0f}M tokens, and "
            f"ceil({STEPS_32K * BATCH_TOKENS_32K / 1e6:.0f}M / 100M) = {DEFAULT_TRAIN_SHARDS}; the 8k "
            "baseline, ~1011 x 393,216 = ~398M tokens, needs 4 to avoid wrapping around)"
        ),
    )
    p.add_argument(
        "--out",
        type=Path,
        default=default_out_dir(),
        help="folder that receives tokenizers/ and datasets/ (default: the data/ folder of this repo)",
    )
    return p


def main(argv=None, download: Optional[Downloader] = None, probe: Optional[Callable[[], None]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        fetch(args.out, args.train_shards, download=download, probe=probe)
    except HubUnreachable as e:
        print(
            f"fetch_fineweb: error: the Hugging Face Hub is unreachable: {e}. "
            "FineWeb needs network; for an offline dataset run data/build_pydocs_dataset.py",
            file=sys.stderr,
        )
        return EXIT_OFFLINE
    except FetchError as e:
        print(f"fetch_fineweb: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("fetch_fineweb: interrupted; complete files are kept, partial ones are redone next time", file=sys.stderr)
        return 130
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
