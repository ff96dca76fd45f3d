"""Generate a synthetic token dataset in the shard format, for GPU smoke runs and benchmarks where no real
data is present (the GPU host has no network). The stream is a random sparse bigram chain over the vocabulary,
with document breaks (bos=1), so a model's loss falls quickly but not to zero; numbers measured on it say
nothing about language modelling, only about speed and correctness of the training loop.

    python3 data/make_synthetic_dataset.py --out data/datasets/synthetic_sp1024 --train-tokens 20000000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.shards import write_shard  # noqa: E402


def bigram_stream(n: int, vocab: int, seed: int, walk_seed: int, branching: int = 8,
                  doc_len: int = 2048) -> np.ndarray:
    """Each token is followed by one of `branching` successors fixed per token by `seed` (the 'language');
    `walk_seed` draws the walk. Documents of doc_len tokens start with bos=1 and are walked in parallel."""
    successors = np.random.default_rng(seed).integers(4, vocab, size=(vocab, branching))
    rng = np.random.default_rng(walk_seed)
    n_docs = n // doc_len + 1
    docs = np.empty((n_docs, doc_len), dtype=np.uint16)
    docs[:, 0] = 1
    cur = rng.integers(4, vocab, size=n_docs)
    for t in range(1, doc_len):
        docs[:, t] = cur
        cur = successors[cur, rng.integers(0, branching, size=n_docs)]
    return docs.reshape(-1)[:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/datasets/synthetic_sp1024", help="output folder")
    p.add_argument("--train-tokens", type=int, default=20_000_000)
    p.add_argument("--val-tokens", type=int, default=2_000_000)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args(argv)
    if a.train_tokens < 2 or a.val_tokens < 2 or not 8 <= a.vocab <= 65536:
        p.error("--train-tokens and --val-tokens must be >= 2 and --vocab in [8, 65536]")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    write_shard(out / "synthetic_train_000000.bin", bigram_stream(a.train_tokens, a.vocab, a.seed, a.seed + 1))
    write_shard(out / "synthetic_val_000000.bin", bigram_stream(a.val_tokens, a.vocab, a.seed, a.seed + 2))
    print(f"synthetic dataset: {a.train_tokens} train + {a.val_tokens} val tokens in {out} "
          f"({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
