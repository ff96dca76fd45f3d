"""Build the offline default dataset ``pydocs_sp1024`` from the documentation that ships with Python.

Why this text. Training and evaluation need a corpus that every fresh machine with the project's
requirements already has, offline. The closest thing to FineWeb's web prose on such a machine is the
English documentation that comes with Python and the installed packages, so the builder takes, in this
order: the Python reference manual's topics (``pydoc_data/topics.py``, ~800 KB of prose), the
docstrings and comment blocks of the standard library, the README texts (``METADATA`` long
descriptions) of the project's packages, and the docstrings and documentation strings (e.g. torch's
``add_docstr`` texts) of those packages and their dependencies (numpy, torch, sympy, networkx,
matplotlib, huggingface_hub, ...). It keeps prose and drops code: source code itself is never used,
doctest examples (``>>>`` blocks and their output) are removed, paragraphs that are mostly symbols
rather than words are dropped, test suites, vendored code and licence files are skipped, and
repeated paragraphs (inherited or copied docstrings, licence headers) are kept only once. The result
is technical English close in spirit to the educational part of FineWeb, though narrower in topic, so
losses and bits per byte on it are not comparable with FineWeb numbers; it is for runs that must work
without network, not for reproducing the study's scores.

What it builds (``--out`` defaults to this script's folder, ``data/``)::

    <out>/tokenizers/pydocs_1024_bpe.model           SentencePiece BPE, vocab 1024, same trainer
                                                     settings as the FineWeb tokenizer
    <out>/datasets/pydocs_sp1024/pydocs_val_000000.bin     shards in the FineWeb format (data/shards.py)
    <out>/datasets/pydocs_sp1024/pydocs_train_000000.bin   (more train shards if over --shard-tokens)
    <out>/datasets/pydocs_sp1024/manifest.json      sources, counts, versions, checksums, date

Documents are per source file (long ones cut at paragraph boundaries into ~40k-character pieces) and
per manual topic; each is preceded by the BOS token (id 1), as in the FineWeb shards. The val split is
chosen by the SHA-256 of the document id (independent of the seed): the documents with the smallest
hashes go to val until it holds about 2% of the characters and at least 262,144 tokens, enough for
eight 32k-context sequences (for a small ``--max-chars`` build the minimum shrinks to a quarter of the
data). The tokenizer is trained on train-split paragraphs only. Train documents are shuffled with the
seed. Everything is deterministic for a given machine (sorted file lists, a fixed seed, a
single-threaded tokenizer trainer): two builds give identical shard and tokenizer bytes. The text
depends on the installed Python and package versions, which manifest.json records.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata as importlib_metadata
import importlib.util
import io
import json
import os
import random
import re
import struct
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

if __package__ in (None, ""):  # run as `python3 data/build_pydocs_dataset.py`: make `data.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from data.shards import read_header, shard_is_complete, write_shard  # noqa: E402

DATASET_NAME = "pydocs_sp1024"
SHARD_PREFIX = "pydocs"
TOKENIZER_NAME = "pydocs_1024_bpe"
VOCAB_SIZE = 1024
BOS_ID = 1

# Trainer settings of the real FineWeb tokenizer (read from its ModelProto), plus determinism settings.
TRAINER_SETTINGS = dict(
    model_type="bpe",
    vocab_size=VOCAB_SIZE,
    pad_id=0,
    bos_id=1,
    eos_id=2,
    unk_id=3,
    byte_fallback=False,
    split_digits=True,
    character_coverage=0.999,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    hard_vocab_limit=False,
)
DETERMINISM_SETTINGS = dict(num_threads=1, input_sentence_size=0, shuffle_input_sentence=False)

# Distributions whose docs are used: the project's requirements and their (pure-Python) dependencies,
# so the set is the same on every machine where the requirements are installed. Missing ones are skipped.
DEFAULT_PACKAGES = (
    "numpy",
    "torch",
    "sympy",
    "mpmath",
    "networkx",
    "matplotlib",
    "huggingface_hub",
    "sentencepiece",
    "jinja2",
    "fsspec",
    "filelock",
    "tqdm",
    "packaging",
    "pyparsing",
    "python-dateutil",
    "pillow",
    "click",
    "typing_extensions",
)

SKIP_DIRS = {
    "__pycache__", "site-packages", "dist-packages", "test", "tests", "testing", "idle_test",
    "_vendor", "vendor", "vendored", "third_party", "benchmarks", "pydoc_data",
}
MAX_SOURCE_BYTES = 4_000_000  # larger .py files are generated tables, not documentation
DOC_CHUNK_CHARS = 40_000
MIN_DOC_CHARS = 200
MIN_LONG_STRING = 200  # non-docstring string constants at least this long are candidates (e.g. add_docstr)
MIN_DEDUP_CHARS = 60

VAL_FRACTION = 0.02
MIN_VAL_TOKENS = 262_144  # 8 sequences of 32,768
MAX_VAL_SHARE = 0.25  # cap on the minimum for small builds
VAL_CHARS_PER_TOKEN = 3.0  # guess (2.8 measured) used to pick val by characters before tokenising

TOKENIZER_TRAIN_CHARS = 40_000_000  # cap on the tokenizer's training text (sampled paragraphs; ~3 s per 10M)
MAX_SENTENCE_CHARS = 2_000
DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_SEED = 1337


# --------------------------------------------------------------------------------------------------
# Text extraction
# --------------------------------------------------------------------------------------------------

@dataclass
class Doc:
    id: str
    source: str
    text: str


_BLANKS_RE = re.compile(r"\n\s*\n")
_UNDERLINE_RE = re.compile(r"^\s*([=\-~^*#+`'\"._])\1{2,}\s*$")
_PUNCT = ".,:;!?\"'()*"
_CODE_CHARS = frozenset("{}[]()<>=;\\|$@^~%&+#")
_CODE_LINE_RE = re.compile(
    r"""^\s*(?:
        (?:def|class|import|from|return|yield|raise|assert|del|with|for|while|if|elif|try|except|lambda)\b.*[:)\]]\s*$
      | [@%$>]                                  # decorator, magic, shell prompt, >>> leftovers
      | \.\.\.\s                                # doctest continuation
      | [\w.\[\]'"]+\s*[-+*/|&^%@]?=\s*\S        # assignment
      | [\w.]+\(.*\)\s*[,;]?\s*$                # bare call
      | .*::=                                  # grammar production
      | [}\])]                                 # closing bracket
      | .*[{;]\s*$                             # C-like line end
    )""",
    re.VERBOSE,
)
# reST directives whose indented body is code or markup, not prose
_SKIP_DIRECTIVES = {
    "code", "code-block", "sourcecode", "math", "testcode", "testsetup", "testoutput", "doctest",
    "literalinclude", "plot", "autosummary", "toctree", "image", "figure", "raw", "highlight",
    "include", "csv-table", "list-table", "table", "graphviz", "mermaid", "currentmodule", "module",
    "autofunction", "autoclass", "automodule", "automethod", "autoattribute", "function", "method",
    "attribute", "data", "class", "exception", "index", "only", "rubric", "parsed-literal", "ipython",
    "jupyter-execute", "unicode", "replace",
}
_DIRECTIVE_RE = re.compile(r"^\.\.\s+([\w:-]+)::\s*(.*)$")


def _clean_block(text: str) -> str:
    """Dedent a docstring-like block (as inspect.cleandoc) and strip trailing spaces."""
    lines = text.expandtabs().split("\n")
    indents = [len(ln) - len(ln.lstrip()) for ln in lines[1:] if ln.strip()]
    margin = min(indents) if indents else 0
    out = [lines[0].strip()] + [ln[margin:].rstrip() for ln in lines[1:]]
    return "\n".join(out).strip("\n")


def strip_doctests(text: str) -> str:
    """Remove examples: Markdown fenced code blocks, and a line starting with '>>>' (or IPython's 'In [n]:')
    with everything up to the next blank line."""
    out = []
    in_example = False
    fence = None
    for line in text.split("\n"):
        s = line.strip()
        if fence is not None:  # inside a Markdown fenced code block
            if s.startswith(fence):
                fence = None
            continue
        if s.startswith(("```", "~~~")):
            fence = s[:3]
            continue
        if s.startswith(">>>") or s.startswith("In [") and "]:" in s:
            in_example = True
            continue
        if in_example:
            if not s:
                in_example = False
                out.append(line)
            continue
        out.append(line)
    return "\n".join(out)


def is_prose(par: str) -> bool:
    """Heuristic: a paragraph of words, not code, grammar, tables or symbols (headings count as prose)."""
    chars = [c for c in par if not c.isspace()]
    n = len(chars)
    if n == 0:
        return False
    letters = sum(c.isalpha() for c in chars)
    code = sum(c in _CODE_CHARS for c in chars)
    if not any(len(w.strip(_PUNCT)) > 1 and w.strip(_PUNCT).isalpha() for w in par.split()):
        return False
    if letters / n < 0.6 or code / n > 0.08:
        return False
    lines = [ln for ln in par.split("\n") if ln.strip()]
    codey = sum(1 for ln in lines if _CODE_LINE_RE.match(ln))
    return 2 * codey < len(lines) or (len(lines) == 1 and codey == 0)


def _indent(par: str) -> int:
    return min(len(ln) - len(ln.lstrip()) for ln in par.split("\n") if ln.strip())


def prose_paragraphs(text: str) -> list[str]:
    """Split a cleaned block into prose paragraphs.

    Drops doctests, reST literal blocks (the indented paragraphs after one ending in '::') and the
    bodies of code-like directives (code-block, math, plot, ...), heading underlines and paragraphs
    that fail ``is_prose``; admonitions (note, warning, ...) are kept as "Note: ..." text.
    """
    text = strip_doctests(text)
    pars: list[str] = []
    skip_deeper_than: Optional[int] = None
    for par in _BLANKS_RE.split(text):
        lines = [ln.rstrip() for ln in par.split("\n") if ln.strip() and not _UNDERLINE_RE.match(ln)]
        if not lines:
            continue
        par = "\n".join(lines)
        ind = _indent(par)
        if skip_deeper_than is not None:
            if ind > skip_deeper_than:
                continue
            skip_deeper_than = None
        m = _DIRECTIVE_RE.match(lines[0].strip())
        if m:
            name = m.group(1).split(":")[-1].lower()
            if name in _SKIP_DIRECTIVES:
                skip_deeper_than = ind
                continue
            body = " ".join([m.group(2).strip()] + [ln.strip() for ln in lines[1:]]).strip()
            if not body:
                continue
            par = name.replace("-", " ").capitalize() + ": " + body
        elif par.strip().startswith(".."):  # comments, targets, substitutions
            continue
        if par.endswith("::"):
            skip_deeper_than = ind
            par = par[:-2].rstrip()
            par = par + ":" if par and par[-1].isalnum() else par
            if not par.strip():
                continue
        if is_prose(par):
            pars.append(par)
    return pars


def _comment_blocks(lines: list[str], skip_lines: set[int]) -> list[tuple[int, str]]:
    """Full-line '#' comments joined into blocks: [(first line number, text)], 1-based lines."""
    blocks: list[tuple[int, str]] = []
    cur: list[str] = []
    start = 0
    for i, line in enumerate(lines, 1):
        s = line.strip()
        if i not in skip_lines and s.startswith("#") and not s.startswith("#!"):
            body = s.lstrip("#").strip()
            low = body.lower()
            if low.startswith(("-*-", "type:", "noqa", "pragma", "fmt:", "pylint:", "mypy:", "flake8",
                               "pyrefly:", "pyre-", "pyright:", "isort:", "ruff:", "coverage:")):
                body = ""
            if body:
                if not cur:
                    start = i
                cur.append(body)
                continue
            if cur:  # an empty '#' line separates paragraphs inside one block
                cur.append("\n")
                continue
        if cur:
            blocks.append((start, _join_comment(cur)))
            cur = []
    if cur:
        blocks.append((start, _join_comment(cur)))
    return blocks


def _join_comment(parts: list[str]) -> str:
    text = " ".join(parts)
    return re.sub(r" ?\n ?", "\n\n", text).strip()


def extract_python_file(path: str) -> str:
    """Documentation text of one .py file: docstrings, long doc strings and comment blocks in order."""
    try:
        if os.path.getsize(path) > MAX_SOURCE_BYTES:
            return ""
        with open(path, "rb") as f:
            raw = f.read()
        src = raw.decode("utf-8")
        tree = ast.parse(src, filename=path)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError, RecursionError):
        return ""
    items: list[tuple[int, str]] = []
    in_strings: set[int] = set()
    doc_nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", None)
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                c = body[0].value
                doc_nodes.add(id(c))
                items.append((c.lineno, _clean_block(c.value)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            end = getattr(node, "end_lineno", node.lineno) or node.lineno
            if end > node.lineno:
                in_strings.update(range(node.lineno, end + 1))
            if id(node) not in doc_nodes and len(node.value) >= MIN_LONG_STRING:
                items.append((node.lineno, _clean_block(node.value)))
    items.extend(_comment_blocks(src.split("\n"), in_strings))
    items.sort(key=lambda t: t[0])
    pars: list[str] = []
    for _, block in items:
        pars.extend(prose_paragraphs(block))
    return "\n\n".join(pars)


def extract_text_block(text: str) -> str:
    return "\n\n".join(prose_paragraphs(_clean_block(text)))


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------

def _walk_py(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath) / name


def stdlib_files() -> list[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [(f"stdlib/{p.relative_to(root).as_posix()}", str(p)) for p in _walk_py(root)]


def _dist_or_none(name: str):
    try:
        return importlib_metadata.distribution(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def package_files(dist_name: str) -> list[tuple[str, str]]:
    """(doc id, path) of the .py files of an installed distribution, sorted, tests/vendored skipped."""
    dist = _dist_or_none(dist_name)
    if dist is None:
        return []
    label = dist.metadata["Name"] or dist_name
    paths: list[tuple[str, Path]] = []
    files = dist.files
    if files:
        for f in files:
            parts = f.parts
            if not f.name.endswith(".py") or any(p in SKIP_DIRS or p.endswith((".dist-info", ".egg-info")) or p == ".."
                                                  for p in parts[:-1]):
                continue
            paths.append((f.as_posix(), Path(f.locate())))
    else:  # no RECORD: fall back to the import location of the top-level package
        top = (dist.read_text("top_level.txt") or dist_name.replace("-", "_")).split()
        for mod in top:
            spec = importlib.util.find_spec(mod)
            if spec and spec.submodule_search_locations:
                root = Path(list(spec.submodule_search_locations)[0])
                paths.extend((f"{mod}/{p.relative_to(root).as_posix()}", p) for p in _walk_py(root))
            elif spec and spec.origin and spec.origin.endswith(".py"):
                paths.append((Path(spec.origin).name, Path(spec.origin)))
    paths.sort(key=lambda t: t[0])
    return [(f"pkg/{label}/{rel}", str(p)) for rel, p in paths if p.is_file()]


def package_readme(dist_name: str) -> Optional[Doc]:
    dist = _dist_or_none(dist_name)
    if dist is None:
        return None
    meta = dist.metadata
    body = meta.get_payload() if hasattr(meta, "get_payload") else None
    body = body or meta.get("Description") or ""
    if not isinstance(body, str) or not body.strip():
        return None
    label = meta["Name"] or dist_name
    return Doc(f"readme/{label}", "package_readmes", body)


def pydoc_topics() -> list[Doc]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    return [Doc(f"pydoc_topics/{k}", "pydoc_topics", topics[k]) for k in sorted(topics)]


def installed_packages(packages: Iterable[str]) -> dict[str, str]:
    out = {}
    for name in packages:
        dist = _dist_or_none(name)
        if dist is not None:
            out[dist.metadata["Name"] or name] = dist.version
    return out


def _extract_worker(item: tuple[str, str, str]) -> tuple[str, str, str]:
    doc_id, source, path = item
    return doc_id, source, extract_python_file(path)


def iter_raw_docs(packages: Iterable[str], workers: int) -> Iterator[Doc]:
    """Raw documents (already reduced to prose) in a fixed order: topics, stdlib, readmes, packages."""
    for d in pydoc_topics():
        yield Doc(d.id, d.source, extract_text_block(d.text))
    packages = list(packages)
    file_items = [(i, "stdlib", p) for i, p in stdlib_files()]
    readmes = [package_readme(p) for p in packages]
    pkg_items = [(i, "package_docs", p) for name in packages for i, p in package_files(name)]

    def run(items):
        if workers > 1 and len(items) > 1:
            import multiprocessing as mp

            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(workers) as pool:
                for doc_id, source, text in pool.imap(_extract_worker, items, chunksize=4):
                    yield Doc(doc_id, source, text)
        else:
            for it in items:
                yield Doc(*_extract_worker(it))

    yield from run(file_items)
    for d in readmes:
        if d is not None:
            yield Doc(d.id, d.source, extract_text_block(d.text))
    yield from run(pkg_items)


def _chunks(doc: Doc, limit: int) -> list[Doc]:
    if len(doc.text) <= limit:
        return [doc]
    out, cur, size = [], [], 0
    for par in doc.text.split("\n\n"):
        if cur and size + len(par) > limit:
            out.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(par)
        size += len(par) + 2
    if cur:
        out.append("\n\n".join(cur))
    return [Doc(f"{doc.id}#{k}", doc.source, t) for k, t in enumerate(out)]


def collect_documents(packages: Iterable[str], max_chars: Optional[int], workers: int,
                      log=print) -> list[Doc]:
    """Deduplicated, prose-only documents, in collection order, stopping after ``max_chars`` characters."""
    seen: set[bytes] = set()
    docs: list[Doc] = []
    total = 0
    gen = iter_raw_docs(packages, workers)
    try:
        for raw in gen:
            pars = []
            for par in raw.text.split("\n\n"):
                if len(par) >= MIN_DEDUP_CHARS:
                    key = hashlib.blake2b(" ".join(par.split()).encode(), digest_size=16).digest()
                    if key in seen:
                        continue
                    seen.add(key)
                pars.append(par)
            text = "\n\n".join(pars)
            if len(text) < MIN_DOC_CHARS:
                continue
            for d in _chunks(Doc(raw.id, raw.source, text), DOC_CHUNK_CHARS):
                if max_chars is not None and total >= max_chars:
                    return docs
                if max_chars is not None and total + len(d.text) > max_chars:
                    d = Doc(d.id, d.source, d.text[: max_chars - total])
                docs.append(d)
                total += len(d.text)
            if max_chars is not None and total >= max_chars:
                return docs
    finally:
        gen.close()
    return docs


# --------------------------------------------------------------------------------------------------
# Split, tokenizer, encoding
# --------------------------------------------------------------------------------------------------

def doc_hash(doc_id: str) -> str:
    return hashlib.sha256(doc_id.encode("utf-8")).hexdigest()


def split_by_chars(docs: list[Doc], min_val_tokens: int) -> tuple[list[int], list[int], list[int]]:
    """Indices (val, train, hash order). Val: smallest hashes until the character target is met."""
    order = sorted(range(len(docs)), key=lambda i: doc_hash(docs[i].id))
    total = sum(len(d.text) for d in docs)
    target = max(VAL_FRACTION * total, min(min_val_tokens * VAL_CHARS_PER_TOKEN, MAX_VAL_SHARE * total))
    val, size = [], 0
    for i in order:
        if size >= target:
            break
        val.append(i)
        size += len(docs[i].text)
    vset = set(val)
    train = [i for i in range(len(docs)) if i not in vset]
    return val, train, order


def tokenizer_sentences(texts: Iterable[str], seed: int, max_chars: int) -> list[str]:
    """Paragraphs (whitespace collapsed, long ones cut at spaces), shuffled with ``seed``, capped."""
    sents = []
    for text in texts:
        for par in text.split("\n\n"):
            par = " ".join(par.split())
            while len(par) > MAX_SENTENCE_CHARS:
                cut = par.rfind(" ", 0, MAX_SENTENCE_CHARS)
                cut = cut if cut > 0 else MAX_SENTENCE_CHARS
                sents.append(par[:cut])
                par = par[cut:].lstrip()
            if par:
                sents.append(par)
    random.Random(seed).shuffle(sents)
    out, size = [], 0
    for s in sents:
        if size >= max_chars:
            break
        out.append(s)
        size += len(s)
    return out


def train_tokenizer(sentences: list[str], seed: int) -> bytes:
    """Train the SentencePiece BPE (vocab 1024, FineWeb trainer settings); return the model bytes."""
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buf,
        minloglevel=2,
        **TRAINER_SETTINGS,
        **DETERMINISM_SETTINGS,
    )
    return buf.getvalue()


def encode_docs(model_bytes: bytes, docs: list[Doc], threads: int, batch: int = 256) -> list[np.ndarray]:
    """Token arrays (uint16) of each document, each starting with BOS."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    out: list[np.ndarray] = []
    for s in range(0, len(docs), batch):
        texts = [d.text for d in docs[s: s + batch]]
        for ids in sp.encode(texts, num_threads=max(1, threads)):
            arr = np.empty(len(ids) + 1, dtype=np.uint16)
            arr[0] = BOS_ID
            arr[1:] = ids
            out.append(arr)
    return out


# Fields of sentencepiece's ModelProto (sentencepiece_model.proto) read by read_model_settings, with
# their proto2 defaults; decoded here directly so no protobuf package is needed.
_TRAINER_FIELDS = {
    3: ("model_type", 1), 4: ("vocab_size", 8000), 10: ("character_coverage", 0.9995),
    25: ("split_digits", False), 33: ("hard_vocab_limit", True), 35: ("byte_fallback", False),
    40: ("unk_id", 0), 41: ("bos_id", 1), 42: ("eos_id", 2), 43: ("pad_id", -1),
}
_NORMALIZER_FIELDS = {1: ("normalization_rule_name", ""), 3: ("add_dummy_prefix", True),
                      4: ("remove_extra_whitespaces", True)}
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a serialized protobuf message (one level)."""
    i, n = 0, len(buf)

    def varint(i):
        out = shift = 0
        while True:
            b = buf[i]
            i += 1
            out |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return out, i

    while i < n:
        key, i = varint(i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, i = varint(i)
        elif wire == 1:
            val, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = varint(i)
            val, i = buf[i:i + size], i + size
        elif wire == 5:
            val, i = struct.unpack("<f", buf[i:i + 4])[0], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, val


def read_model_settings(model) -> dict:
    """Trainer and normalizer settings stored in a SentencePiece model (a path or the model bytes)."""
    buf = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    out = {name: default for name, default in _TRAINER_FIELDS.values()}
    out.update({name: default for name, default in _NORMALIZER_FIELDS.values()})
    pieces = 0
    for field, _, val in _proto_fields(buf):
        if field == 1:
            pieces += 1
        elif field in (2, 3):
            table = _TRAINER_FIELDS if field == 2 else _NORMALIZER_FIELDS
            for f, wire, v in _proto_fields(val):
                if f not in table:
                    continue
                name, default = table[f]
                if isinstance(default, bool):
                    v = bool(v)
                elif isinstance(default, int) and wire == 0:
                    v = v - (1 << 64) if v >= (1 << 63) else v  # negative int32 are 10-byte varints
                elif isinstance(v, (bytes, bytearray)):
                    v = v.decode("utf-8")
                out[name] = v
    out["model_type"] = _MODEL_TYPES.get(out["model_type"], out["model_type"])
    out["character_coverage"] = round(float(out["character_coverage"]), 6)
    out["pieces"] = pieces
    return out


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_split(out_dir: Path, split: str, arrays: list[np.ndarray], shard_tokens: int) -> list[dict]:
    """Concatenate and write as <prefix>_<split>_NNNNNN.bin shards; remove stale higher-numbered ones."""
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint16)
    n = max(1, -(-tokens.size // shard_tokens))
    shards = []
    for k in range(n):
        path = out_dir / f"{SHARD_PREFIX}_{split}_{k:06d}.bin"
        count = write_shard(path, tokens[k * shard_tokens: (k + 1) * shard_tokens])
        shards.append({"file": path.name, "tokens": count, "sha256": _sha256_file(path)})
    for stale in sorted(out_dir.glob(f"{SHARD_PREFIX}_{split}_*.bin")):
        if stale.name not in {s["file"] for s in shards}:
            stale.unlink()
    return shards


# --------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------

def output_paths(out: Path) -> tuple[Path, Path, Path]:
    out = Path(out)
    return (out / "tokenizers" / f"{TOKENIZER_NAME}.model",
            out / "datasets" / DATASET_NAME,
            out / "datasets" / DATASET_NAME / "manifest.json")


def _build_args(max_chars, seed, packages, shard_tokens, min_val_tokens) -> dict:
    return {
        "max_chars": max_chars,
        "seed": seed,
        "packages": list(packages),
        "shard_tokens": shard_tokens,
        "min_val_tokens": min_val_tokens,
    }


def existing_build(out: Path, args: dict) -> Optional[dict]:
    """The manifest of a complete build made with the same arguments, else None."""
    model_path, data_dir, manifest_path = output_paths(out)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("build_args") != args:
        return None
    try:
        if _sha256_file(model_path) != manifest["tokenizer"]["sha256"]:
            return None
        for split in ("train", "val"):
            for s in manifest["shards"][split]:
                p = data_dir / s["file"]
                if not shard_is_complete(p) or read_header(p) != s["tokens"]:
                    return None
    except (OSError, KeyError, TypeError):
        return None
    return manifest


def build(
    out,
    max_chars: Optional[int] = None,
    seed: int = DEFAULT_SEED,
    force: bool = False,
    packages: Iterable[str] = DEFAULT_PACKAGES,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    min_val_tokens: int = MIN_VAL_TOKENS,
    workers: Optional[int] = None,
    log=print,
) -> dict:
    """Build (or reuse) the pydocs_sp1024 dataset under ``out``; return its manifest dict."""
    t_start = time.time()
    out = Path(out)
    packages = tuple(packages)
    args = _build_args(max_chars, seed, packages, shard_tokens, min_val_tokens)
    model_path, data_dir, manifest_path = output_paths(out)
    if not force:
        manifest = existing_build(out, args)
        if manifest is not None:
            c = manifest["counts"]
            log(f"{DATASET_NAME} is already built and complete under {out} "
                f"({c['train_tokens']:,} train / {c['val_tokens']:,} val tokens); use --force to rebuild")
            return manifest
        if manifest_path.exists():
            log(f"existing {DATASET_NAME} build is incomplete or made with other arguments: rebuilding")
    workers = workers or max(1, min(2, os.cpu_count() or 1))

    # 1. text
    t0 = time.time()
    docs = collect_documents(packages, max_chars, workers, log=log)
    if not docs:
        raise RuntimeError("no documentation text found (is the Python standard library installed?)")
    n_chars = sum(len(d.text) for d in docs)
    by_source: dict[str, dict] = {}
    for d in docs:
        s = by_source.setdefault(d.source, {"documents": 0, "characters": 0})
        s["documents"] += 1
        s["characters"] += len(d.text)
    t_collect = time.time() - t0
    log(f"collected {len(docs):,} documents, {n_chars:,} characters in {t_collect:.1f} s: "
        + ", ".join(f"{k} {v['documents']:,} docs / {v['characters']:,} chars" for k, v in by_source.items()))

    # 2. split (by document-id hash) and tokenizer (on train paragraphs only)
    val_idx, train_idx, hash_order = split_by_chars(docs, min_val_tokens)
    t0 = time.time()
    sents = tokenizer_sentences((docs[i].text for i in train_idx), seed, TOKENIZER_TRAIN_CHARS)
    model_bytes = train_tokenizer(sents, seed)
    t_tok = time.time() - t0
    log(f"trained the tokenizer on {len(sents):,} paragraphs ({sum(map(len, sents)):,} chars) in {t_tok:.1f} s")

    # 3. encode; make sure val holds enough tokens
    t0 = time.time()
    arrays = encode_docs(model_bytes, docs, workers)
    n_tokens = int(sum(a.size for a in arrays))
    want_val = min(min_val_tokens, int(MAX_VAL_SHARE * n_tokens))
    val_set = set(val_idx)
    val_tokens = sum(arrays[i].size for i in val_idx)
    moved = 0
    for i in hash_order:
        if val_tokens >= want_val:
            break
        if i not in val_set:
            val_set.add(i)
            val_tokens += arrays[i].size
            moved += 1
    if moved:
        log(f"note: moved {moved} more documents to val to reach {want_val:,} tokens "
            "(the tokenizer saw their text)")
    val_idx = [i for i in hash_order if i in val_set]
    train_idx = [i for i in range(len(docs)) if i not in val_set]
    random.Random(seed).shuffle(train_idx)
    t_enc = time.time() - t0
    log(f"encoded {n_tokens:,} tokens in {t_enc:.1f} s ({n_chars / max(n_tokens, 1):.2f} chars/token)")

    # 4. write: tokenizer, shards, manifest last (its presence marks a complete build)
    data_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    _atomic_write_bytes(model_path, model_bytes)
    shards = {
        "train": write_split(data_dir, "train", [arrays[i] for i in train_idx], shard_tokens),
        "val": write_split(data_dir, "val", [arrays[i] for i in val_idx], shard_tokens),
    }
    train_tokens = sum(s["tokens"] for s in shards["train"])
    val_tokens = sum(s["tokens"] for s in shards["val"])
    import sentencepiece as spm

    manifest = {
        "name": DATASET_NAME,
        "description": "Offline default dataset: English documentation shipped with Python and the "
                       "project's packages (reference manual topics, docstrings, comment blocks, READMEs), "
                       "prose only, tokenised with a SentencePiece BPE of vocabulary 1024 trained on it.",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "builder": "data/build_pydocs_dataset.py",
        "build_args": args,
        "format": "shards: 256 little-endian int32 header (magic 20240520, version 1, token count) then "
                  "uint16 tokens; each document is preceded by BOS (id 1)",
        "tokenizer": {
            "file": f"tokenizers/{TOKENIZER_NAME}.model",
            "sha256": hashlib.sha256(model_bytes).hexdigest(),
            "trainer_settings": TRAINER_SETTINGS,
            "training_paragraphs": len(sents),
            "training_characters": sum(map(len, sents)),
        },
        "sources": by_source,
        "split": {
            "rule": "documents sorted by sha256(document id); the first ones go to val until it holds "
                    f"{VAL_FRACTION:.0%} of the characters and at least min({min_val_tokens}, "
                    f"{MAX_VAL_SHARE} x all tokens) tokens",
            "val_documents": len(val_idx),
            "train_documents": len(train_idx),
        },
        "counts": {
            "documents": len(docs),
            "characters": n_chars,
            "train_tokens": train_tokens,
            "val_tokens": val_tokens,
            "chars_per_token": round(n_chars / max(n_tokens, 1), 4),
        },
        "shards": shards,
        "software": {
            "python": sys.version.split()[0],
            "platform": sys.platform,
            "numpy": np.__version__,
            "sentencepiece": getattr(spm, "__version__", "unknown"),
            "packages": installed_packages(packages),
        },
        "seconds": {"collect": round(t_collect, 1), "tokenizer": round(t_tok, 1),
                    "encode": round(t_enc, 1), "total": round(time.time() - t_start, 1)},
    }
    _atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    log(f"built {DATASET_NAME} in {time.time() - t_start:.1f} s: {len(docs):,} documents "
        f"({len(train_idx):,} train / {len(val_idx):,} val), {n_chars:,} characters, "
        f"{train_tokens:,} train tokens in {len(shards['train'])} shard(s), {val_tokens:,} val tokens")
    log(f"  tokenizer: {model_path}")
    log(f"  shards:    {data_dir}/{SHARD_PREFIX}_{{train,val}}_NNNNNN.bin, manifest.json")
    return manifest


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build_pydocs_dataset.py",
        description=f"Build the offline dataset {DATASET_NAME} (tokenizer + shards) from the documentation "
                    "shipped with Python and the installed packages. No network needed. Skips the work when "
                    "a complete build with the same arguments exists.",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                   help="folder that receives tokenizers/ and datasets/ (default: the data/ folder of this repo)")
    p.add_argument("--max-chars", type=int, default=None, metavar="N",
                   help="stop collecting text after N characters (default: all; for quick tests)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed for the tokenizer's training sample and the train document order (default {DEFAULT_SEED})")
    p.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, metavar="N",
                   help=f"tokens per shard file (default {DEFAULT_SHARD_TOKENS:,}, as FineWeb)")
    p.add_argument("--min-val-tokens", type=int, default=MIN_VAL_TOKENS, metavar="N",
                   help=f"minimum val tokens (default {MIN_VAL_TOKENS:,}; capped at {int(MAX_VAL_SHARE * 100)}%% of all tokens)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes for text extraction and encoding (default min(2, CPUs); output is the same)")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.max_chars is not None and a.max_chars <= 0:
        print("build_pydocs_dataset: error: --max-chars must be positive", file=sys.stderr)
        return 2
    if a.shard_tokens <= 0:
        print("build_pydocs_dataset: error: --shard-tokens must be positive", file=sys.stderr)
        return 2
    build(a.out, max_chars=a.max_chars, seed=a.seed, force=a.force, shard_tokens=a.shard_tokens,
          min_val_tokens=a.min_val_tokens, workers=a.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
