"""Parse training logs of the baseline / hybrid scripts (ours and the original study's).

Pure library: stdlib only, no printing. A file holds one or more runs, each laid out as

    [script source]  ====  [environment: Python, PyTorch, nvidia-smi]  ====  [output lines]

(source and environment are optional). Two rules keep log-like strings inside the source, such as
`print(f"step:{step}/{n} val_loss:{x}")` or a docstring example, from being read as output:

* Source is skipped: from the first column-0 line that looks like Python (import/from/def/class/
  decorator/comment/docstring quote) up to the next line of '='.
* An output line must start at column 0 with an exact prefix and its key:value fields must parse
  with the right types (`step:{step}` is not an integer), so indented or quoted code never matches.

A new run starts at a preamble line (Running Python/PyTorch, nvidia-smi GPU row, dataset, model,
device, model_params, seed, batch config) once the current run has begun training, or when a
once-per-run line (Running Python, model, model_params, seed, batch config) repeats.
Benchmark probe lines (`probe model:... ms_per_step:...`) are collected from any file.
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

SEPARATOR = re.compile(r"^={20,}\s*$")
PY_SOURCE = re.compile(
    r"""^(?:[rRbBuUfF]{0,2}(?:\"\"\"|''')|\#|import\s|from\s+[\w.]+\s+import\s|def\s|class\s"""
    r"""|async\s+def\s|@\w|if\s+__name__)"""
)
KEY = re.compile(r"(?<!\S)([A-Za-z_]\w*):")  # a key:value key, only at a word start
SMI_GPU_ROW = re.compile(r"^\|\s+\d+\s+(\S.*?)\s{2,}(?:On|Off)\s+\|")
PEAK_MEM = re.compile(r"^peak memory allocated:\s*(\d+)\s*MiB\s+reserved:\s*(\d+)\s*MiB\s*$")
COMPRESSED = re.compile(r"^Serialized model int8\+zlib:\s*(\d+)\s+bytes\b")

# Prefixes whose lines we must understand; a failed parse there is reported as malformed.
STRICT_PREFIXES = ("step:", "final_int8_zlib_roundtrip", "stopping_early:", "model_params:",
                   "peak memory", "Serialized model int8+zlib", "probe ")


@dataclass
class TrainPoint:
    step: int
    train_loss: float
    train_time_ms: float


@dataclass
class ValPoint:
    step: int
    val_loss: float
    val_bpb: float
    train_time_ms: float


@dataclass
class Probe:
    model: str
    seq_len: int
    batch_tokens: int | None
    ms_per_step: float
    tokens_per_s: float | None
    mfu: float | None
    peak_mem_mib: float | None
    card: str
    torch: str
    path: str = ""
    line: int = 0
    version: str = ""  # bench_step_time --label (which version of the scripts was measured)


@dataclass
class Run:
    path: str
    index: int            # 1-based position within its file
    first_line: int
    model: str | None = None       # from our `model:` line
    gdn: bool = False               # original hybrid: `gdn_layers:` / `GDN core:` lines
    seq_len: int | None = None
    batch_tokens: int | None = None
    iterations: int | None = None
    seed: int | None = None
    params: int | None = None
    world_size: int | None = None
    dataset: str | None = None
    data_path: str | None = None
    card: str | None = None
    torch: str | None = None
    python: str | None = None
    train: list[TrainPoint] = field(default_factory=list)
    val: list[ValPoint] = field(default_factory=list)
    stop_step: int | None = None
    stop_train_time_ms: float | None = None
    final_exact: tuple[float, float] | None = None     # (val_loss, val_bpb)
    final_rounded: tuple[float, float] | None = None
    peak_alloc_mib: int | None = None
    peak_reserved_mib: int | None = None
    compressed_bytes: int | None = None
    error: str | None = None       # our `error: ...` line (e.g. non-finite loss), run stopped
    malformed: list[tuple[int, str]] = field(default_factory=list)
    seen_once: set[str] = field(default_factory=set, compare=False, repr=False)

    @property
    def started(self) -> bool:
        """Training output seen: a later preamble line then belongs to a new run."""
        return bool(self.train or self.val or self.stop_step is not None or self.final_exact
                    or self.final_rounded or self.peak_alloc_mib is not None
                    or self.compressed_bytes is not None)

    @property
    def model_kind(self) -> str:
        if self.model:
            return self.model
        if self.gdn:
            return "hybrid"
        return "baseline" if (self.params is not None or self.seq_len is not None) else "unknown"

    @property
    def final(self) -> tuple[float, float] | None:
        return self.final_exact or self.final_rounded

    @property
    def final_val_loss(self) -> float | None:
        return self.final[0] if self.final else None

    @property
    def final_bpb(self) -> float | None:
        return self.final[1] if self.final else None

    @property
    def status(self) -> str:
        if self.final:
            return "complete"
        if self.error:
            return f"failed ({self.error[:60]})"
        if self.train or self.val:
            return "truncated (no final line)"
        return "truncated (no training steps)"

    @property
    def steps(self) -> int | None:
        """Steps done: the wall-clock stop line, else the last logged step."""
        if self.stop_step is not None:
            return self.stop_step
        logged = [p.step for p in self.train] + [p.step for p in self.val]
        return max(logged) if logged else None

    @property
    def train_time_ms(self) -> float | None:
        if self.stop_train_time_ms is not None:
            return self.stop_train_time_ms
        points = self.train + self.val
        return max(points, key=lambda p: (p.step, p.train_time_ms)).train_time_ms if points else None

    @property
    def ms_overall(self) -> float | None:
        """Final train_time / steps: what sets the step budget under the wall-clock cap."""
        steps, t = self.steps, self.train_time_ms
        return t / steps if steps and t is not None else None

    @property
    def ms_steady(self) -> float | None:
        """Median ms/step over intervals between consecutive logged train steps from step 10 on."""
        pts = sorted({p.step: p for p in self.train}.values(), key=lambda p: p.step)
        rates = [(b.train_time_ms - a.train_time_ms) / (b.step - a.step)
                 for a, b in zip(pts, pts[1:]) if a.step >= 10]
        return statistics.median(rates) if rates else None

    @property
    def ms_early(self) -> float | None:
        """The original's probe: mean of train_time[s] - train_time[s-1] for s = 6..10."""
        t = {p.step: p.train_time_ms for p in self.train}
        if all(s in t for s in range(5, 11)):
            return (t[10] - t[5]) / 5
        return None


@dataclass
class ParsedFile:
    path: str
    runs: list[Run] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # file-level: empty, binary, no runs
    malformed: list[tuple[int, str]] = field(default_factory=list)  # outside any run


def fields(text: str) -> dict[str, str]:
    """'a:1 card:NVIDIA H100 torch:2.9' -> {'a': '1', 'card': 'NVIDIA H100', 'torch': '2.9'}."""
    marks = list(KEY.finditer(text))
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out.setdefault(m.group(1), text[m.end():end].strip())
    return out


def card_name(s: str) -> str:
    """Our scripts write 'NVIDIA_H100_80GB_HBM3' (no spaces); nvidia-smi 'NVIDIA H100 80GB HBM3'."""
    return s.replace("_", " ").strip()


def _int(s: str | None) -> int | None:
    return int(s) if s is not None and re.fullmatch(r"\d+", s) else None


def _float(s: str | None) -> float | None:
    if s is None or not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", s):
        return None
    return float(s)


def _ms(s: str | None) -> float | None:
    return _float(s[:-2]) if s is not None and s.endswith("ms") else None


def _step(s: str | None) -> tuple[int, int | None] | None:
    """'50/20000' -> (50, 20000); '50' -> (50, None)."""
    m = re.fullmatch(r"(\d+)(?:/(\d+))?", s or "")
    return (int(m.group(1)), _int(m.group(2))) if m else None


class _Parser:
    def __init__(self, path: str):
        self.out = ParsedFile(path)
        self.run: Run | None = None
        self.in_source = False
        self.lineno = 0

    # -- run bookkeeping --------------------------------------------------------------------
    def _new_run(self) -> Run:
        self.run = Run(self.out.path, len(self.out.runs) + 1, self.lineno)
        self.out.runs.append(self.run)
        return self.run

    def _preamble(self, once: str | None = None) -> Run:
        r = self.run
        if r is None or r.started or (once is not None and once in r.seen_once):
            r = self._new_run()
        if once:
            r.seen_once.add(once)
        return r

    def _output(self) -> Run:
        return self.run or self._new_run()

    # -- line dispatch ----------------------------------------------------------------------
    def feed(self, line: str) -> None:
        self.lineno += 1
        line = line.rstrip()
        if SEPARATOR.match(line):
            self.in_source = False
            return
        if self.in_source or not line or line[0].isspace():
            return
        if PY_SOURCE.match(line):
            self.in_source = True
            return
        ok = self._dispatch(line)
        if ok is not True and line.startswith(STRICT_PREFIXES):
            target = self.run.malformed if self.run else self.out.malformed
            target.append((self.lineno, line[:120]))

    def _dispatch(self, line: str) -> bool | None:
        """True: understood; False: malformed; None: not a line we read."""
        if line.startswith("step:"):
            return self._step_line(fields(line))
        if line.startswith("final_int8_zlib_roundtrip"):
            return self._final_line(line)
        if line.startswith("stopping_early:"):
            f = fields(line[len("stopping_early:"):])
            step, t = _step(f.get("step")), _ms(f.get("train_time"))
            if step is None or t is None:
                return False
            r = self._output()
            r.stop_step, r.stop_train_time_ms = step[0], t
            return True
        if m := PEAK_MEM.match(line):
            r = self._output()
            r.peak_alloc_mib, r.peak_reserved_mib = int(m.group(1)), int(m.group(2))
            return True
        if m := COMPRESSED.match(line):
            self._output().compressed_bytes = int(m.group(1))
            return True
        if line.startswith("probe "):
            return self._probe_line(line)
        if line.startswith("error: "):
            r = self._output()
            r.error = r.error or line[len("error: "):].strip()
            return True
        return self._preamble_line(line)

    def _step_line(self, f: dict[str, str]) -> bool:
        step, t = _step(f.get("step")), _ms(f.get("train_time"))
        if step is None or t is None:
            return False
        if "val_loss" in f or "val_bpb" in f:
            loss, bpb = _float(f.get("val_loss")), _float(f.get("val_bpb"))
            if loss is None or bpb is None:
                return False
            self._output().val.append(ValPoint(step[0], loss, bpb, t))
            return True
        loss = _float(f.get("train_loss"))
        if loss is None:
            return False
        self._output().train.append(TrainPoint(step[0], loss, t))
        return True

    def _final_line(self, line: str) -> bool:
        head, _, rest = line.partition(" ")
        if head not in ("final_int8_zlib_roundtrip", "final_int8_zlib_roundtrip_exact"):
            return False
        f = fields(rest)
        loss, bpb = _float(f.get("val_loss")), _float(f.get("val_bpb"))
        if loss is None or bpb is None:
            return False
        r = self._output()
        if head.endswith("_exact"):
            r.final_exact = (loss, bpb)
        else:
            r.final_rounded = (loss, bpb)
        return True

    def _probe_line(self, line: str) -> bool:
        f = fields(line[len("probe "):])
        seq, ms = _int(f.get("seq_len")), _float(f.get("ms_per_step"))
        if not f.get("model") or seq is None or ms is None:
            return False
        mfu = f.get("mfu", "")
        mfu_val = _float(mfu[:-1]) / 100 if mfu.endswith("%") and _float(mfu[:-1]) is not None \
            else _float(mfu or None)
        self.out.probes.append(Probe(
            f["model"], seq, _int(f.get("batch_tokens")), ms, _float(f.get("tokens_per_s")),
            mfu_val, _float(f.get("peak_mem_mib")), card_name(f.get("card", "")), f.get("torch", ""),
            self.out.path, self.lineno, f.get("version", "")))
        return True

    def _preamble_line(self, line: str) -> bool | None:
        if line.startswith("Running Python "):
            self._preamble("python").python = line.split()[2]
        elif line.startswith("Running PyTorch "):
            self._preamble().torch = line.split()[2]
        elif m := SMI_GPU_ROW.match(line):
            r = self._preamble()
            r.card = r.card or card_name(m.group(1))
        elif line.startswith("GDN core:") or line.startswith("gdn_layers:["):
            self._preamble().gdn = True
        elif line.startswith("model_params:"):
            n = _int(line[len("model_params:"):])
            if n is None:
                return False
            self._preamble("model_params").params = n
        elif line.startswith("model:"):
            name = line[len("model:"):].split(maxsplit=1)
            if not name or not re.fullmatch(r"\w+", name[0]):
                return False
            self._preamble("model").model = name[0].lower()
        elif line.startswith("seed:"):
            seed = _int(line[len("seed:"):].strip())
            if seed is None:
                return False
            self._preamble("seed").seed = seed
        elif line.startswith("train_batch_tokens:"):
            f = fields(line)
            tokens, seq = _int(f.get("train_batch_tokens")), _int(f.get("train_seq_len"))
            if tokens is None or seq is None:
                return False
            r = self._preamble("batch")
            r.batch_tokens, r.seq_len, r.iterations = tokens, seq, _int(f.get("iterations"))
        elif m := re.match(r"^train_loader:dataset:(\S+)", line):
            r = self._preamble()
            r.dataset = r.dataset or m.group(1)
        elif line.startswith("dataset:"):
            f = fields(line)
            if not f.get("dataset"):
                return False
            r = self._preamble()
            r.dataset, r.data_path = f["dataset"].split()[0], f.get("data_path") or r.data_path
        elif line.startswith("device:"):
            # Ours: `device:cuda card:NVIDIA_H100_80GB_HBM3 torch:2.9.1 compile:True`. It names the
            # card torch actually used, so it wins over the nvidia-smi row.
            f = fields(line)
            if not f.get("card"):
                return False
            r = self._preamble()
            r.card, r.torch = card_name(f["card"]), f.get("torch") or r.torch
        elif line.startswith("world_size:"):
            self._preamble().world_size = _int(fields(line).get("world_size"))
        else:
            return None
        return True


def parse_text(text: str, path: str = "<text>") -> ParsedFile:
    p = _Parser(path)
    for line in text.splitlines():
        p.feed(line)
    return p.out


def parse_file(path: str | Path) -> ParsedFile:
    """Parse one file; never raises for bad content (problems are recorded on the result)."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return ParsedFile(path, problems=[f"unreadable ({e.strerror or e})"])
    text = data.decode("utf-8", errors="replace")
    parsed = parse_text(text.replace("\0", ""), path)
    if not data.strip():
        parsed.problems.append("empty file")
    else:
        if b"\0" in data or "\ufffd" in text:
            parsed.problems.append("binary or non-UTF-8 content")
        if not parsed.runs and not parsed.probes:
            parsed.problems.append("no runs or probes found")
    return parsed
