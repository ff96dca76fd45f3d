"""
train_gpt.py: a 9-layer full-attention GPT (GQA, RoPE, relu^2 MLP, U-Net skips, tied embedding), trained with
Muon + Adam under a wall-clock cap and scored by val bits-per-byte after an int8+zlib round trip.

Configured by environment variables only (see Hyperparameters). Run as `python3 train_gpt.py` or
`torchrun --standalone --nproc_per_node=N train_gpt.py` (N divides 8). Runs on CUDA (NCCL) or on CPU (gloo).
The parts shared with train_gpt_gdn.py are kept identical; tests/test_scripts_identical.py checks it.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import io
import math
import os
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import torch._functorch.config  # activation_memory_budget (COMPILE_MEMORY_BUDGET)
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel as DDP

# What differs between the two scripts' settings; everything else is shared.
SCRIPT_DEFAULTS = {
    "MODEL_KIND": "baseline",
    "RUN_ID": "baseline_run",
    "MODEL_DIM": 512,
    "WARMDOWN_ITERS": 1200,
}

# -----------------------------------------------------------------------------
# HYPERPARAMETERS
# -----------------------------------------------------------------------------


class ConfigError(ValueError):
    """Bad configuration or input: reported as one line naming the culprit, before any long work."""


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        value = int(default)
    else:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected an integer") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ConfigError(f"{name}={value}: expected an integer in {bounds}")
    return value


def env_float(name: str, default: float, lo: float | None = None, hi: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        value = float(default)
    else:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected a number") from None
    if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ConfigError(f"{name}={value}: expected a finite number in {bounds}")
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, default).strip().lower() or default
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def env_int_or_auto(name: str, lo: int) -> int | str:
    """'auto' (the default; also when empty) or a whole number >= lo."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "auto"):
        return "auto"
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected auto or an integer") from None
    if value < lo:
        raise ConfigError(f"{name}={value}: expected auto or an integer >= {lo}")
    return value


class Hyperparameters:
    """Every setting, read from the environment once; defaults as in SPEC.md (per-script ones in SCRIPT_DEFAULTS)."""

    def __init__(self) -> None:
        d = SCRIPT_DEFAULTS
        self.model_kind = d["MODEL_KIND"]
        # Data and outputs.
        self.data_path = env_str("DATA_PATH", "./data/datasets/fineweb10B_sp1024")
        self.tokenizer_path = env_str("TOKENIZER_PATH", "./data/tokenizers/fineweb_1024_bpe.model")
        self.run_id = env_str("RUN_ID", d["RUN_ID"] + "_" + uuid.uuid4().hex[:8])
        self.output_dir = env_str("OUTPUT_DIR", ".")
        self.seed = env_int("SEED", 1337)
        # Model shape.
        self.vocab_size = env_int("VOCAB_SIZE", 1024, 2, 65535)
        self.num_layers = env_int("NUM_LAYERS", 9, 1, 256)
        self.model_dim = env_int("MODEL_DIM", d["MODEL_DIM"], 8, 65536)
        self.num_heads = env_int("NUM_HEADS", 8, 1, 1024)
        self.num_kv_heads = env_int("NUM_KV_HEADS", 4, 1, 1024)
        self.mlp_mult = env_int("MLP_MULT", 2, 1, 64)
        self.rope_base = env_float("ROPE_BASE", 10000.0, 1.0)
        self.logit_softcap = env_float("LOGIT_SOFTCAP", 30.0, 1e-3)
        self.qk_gain_init = env_float("QK_GAIN_INIT", 1.5, 0.0)
        self.tied_embed_init_std = env_float("TIED_EMBED_INIT_STD", 0.005, 0.0)
        # GDN mixer (used by train_gpt_gdn.py; read here too so both scripts accept the same environment).
        self.gdn_layers_raw = env_str("GDN_LAYERS", d.get("GDN_LAYERS", ""))
        self.gdn_n_heads = env_int("GDN_N_HEADS", 0, 0, 1024)
        self.gdn_expand_v = env_float("GDN_EXPAND_V", 2.0, 0.01, 64.0)
        self.gdn_head_dim_ratio = env_float("GDN_HEAD_DIM_RATIO", 0.75, 0.01, 64.0)
        self.gdn_conv_size = env_int("GDN_CONV_SIZE", 4, 1, 64)
        self.gdn_impl = env_choice("GDN_IMPL", "auto", ("auto", "fla", "torch"))
        self.gdn_save_state = env_choice("GDN_SAVE_STATE", "auto", ("auto", "0", "1"))  # FLA path: keep h for bwd
        self.gdn_save_wv = env_choice("GDN_SAVE_WV", "auto", ("auto", "0", "1"))  # with h: w, v_new too
        self.gdn_state_chain = env_choice("GDN_STATE_CHAIN", "auto", ("auto", "0", "1", "bwd"))  # our recurrences
        self.gdn_chain_segment = env_int_or_auto("GDN_CHAIN_SEGMENT", 0)  # their chains cut every N chunks
        self.gdn_wy_bwd = env_choice("GDN_WY_BWD", "auto", ("auto", "0", "1"))  # our WY backward kernel (v28)
        self.gdn_dqkwg = env_choice("GDN_DQKWG", "auto", ("auto", "0", "1"))  # our dq/dk/dw/dg kernel (v29)
        self.gdn_fwd_o = env_choice("GDN_FWD_O", "auto", ("auto", "0", "1"))  # our chunk output kernel (v30)
        # Training length and batch.
        self.iterations = env_int("ITERATIONS", 20000, 0)
        self.warmdown_iters = env_int("WARMDOWN_ITERS", d["WARMDOWN_ITERS"], 0)
        self.warmup_steps = env_int("WARMUP_STEPS", 20, 0)
        self.train_batch_tokens = env_int("TRAIN_BATCH_TOKENS", 524288, 1)
        self.train_seq_len = env_int("TRAIN_SEQ_LEN", 1024, 2)
        self.max_wallclock_seconds = env_float("MAX_WALLCLOCK_SECONDS", 600.0)
        # Evaluation and logging.
        self.val_batch_size = env_int("VAL_BATCH_SIZE", 524288, 1)
        self.val_loss_every = env_int("VAL_LOSS_EVERY", 1000, 0)
        self.train_log_every = env_int("TRAIN_LOG_EVERY", 200, 1)
        self.val_max_tokens = env_int("VAL_MAX_TOKENS", 0, 0)  # 0: the whole val split (the study's score)
        # Optimiser.
        self.tied_embed_lr = env_float("TIED_EMBED_LR", 0.05, 0.0)
        self.matrix_lr = env_float("MATRIX_LR", 0.04, 0.0)
        self.scalar_lr = env_float("SCALAR_LR", 0.04, 0.0)
        self.muon_momentum = env_float("MUON_MOMENTUM", 0.95, 0.0, 1.0)
        self.muon_momentum_warmup_start = env_float("MUON_MOMENTUM_WARMUP_START", 0.85, 0.0, 1.0)
        self.muon_momentum_warmup_steps = env_int("MUON_MOMENTUM_WARMUP_STEPS", 500, 0)
        self.muon_backend_steps = env_int("MUON_BACKEND_STEPS", 5, 1, 100)
        self.beta1 = env_float("BETA1", 0.9, 0.0, 1.0)
        self.beta2 = env_float("BETA2", 0.95, 0.0, 1.0)
        self.adam_eps = env_float("ADAM_EPS", 1e-8, 0.0)
        self.grad_clip_norm = env_float("GRAD_CLIP_NORM", 0.0, 0.0)
        # Execution.
        self.compile = env_choice("COMPILE", "auto", ("auto", "0", "1"))
        # torch.compile's activation memory budget (1 = save what its default partitioner saves; lower values
        # recompute cheap ops in the backward instead of keeping their outputs: less memory, same math).
        self.compile_memory_budget = env_float("COMPILE_MEMORY_BUDGET", 1.0, 0.0, 1.0)
        # 1: the MLP keeps fc's output, not relu^2 of it, for the backward (ReluSquaredLinear): one MLP-wide tensor
        # less per layer for one more elementwise pass. auto (baseline): on above 49152 tokens per micro-batch (the
        # 32k presets' 65536), where the baseline's peak would exceed the original's (PERF_NOTES v18).
        self.mlp_recompute = env_choice("MLP_RECOMPUTE", d.get("MLP_RECOMPUTE", "auto"), ("auto", "0", "1"))
        # How many blocks, from the first, recompute when MLP_RECOMPUTE is on (default all): each one saves
        # (tokens x MLP width) bf16 of peak memory for one more elementwise pass in its backward.
        self.mlp_recompute_layers = env_int("MLP_RECOMPUTE_LAYERS", self.num_layers, 1, self.num_layers)
        # CUDA graphs of the compiled forward and backward (torch.compile's reduce-overhead mode): the step's
        # thousands of launches become a few graph replays. auto = on for one process on CUDA with compile.
        self.cuda_graphs = env_choice("CUDA_GRAPHS", "auto", ("auto", "0", "1"))
        # Enqueue the next step's forward/backward before waiting for this step's loss and time (they do not depend
        # on its learning rate), so the GPU does not idle at the step boundary. auto = on for one CUDA process.
        self.step_overlap = env_choice("STEP_OVERLAP", "auto", ("auto", "0", "1"))
        self.attn_backend = env_choice("ATTN_BACKEND", "fa4",
                                       ("fa4", "flash", "cudnn", "efficient", "math", "auto"))

    def check_batch(self, world_size: int, grad_accum_steps: int) -> None:
        """Check the batch shape and resolve MLP_RECOMPUTE=auto from it."""
        if self.mlp_recompute == "auto":
            self.mlp_recompute = "1" if self.train_batch_tokens // (world_size * grad_accum_steps) > 49152 else "0"
        per = world_size * grad_accum_steps * self.train_seq_len
        if self.train_batch_tokens % per != 0:
            raise ConfigError(
                f"TRAIN_BATCH_TOKENS={self.train_batch_tokens}: expected a multiple of world_size*grad_accum*"
                f"TRAIN_SEQ_LEN = {world_size}*{grad_accum_steps}*{self.train_seq_len} = {per}")
        if self.val_batch_size < per:
            raise ConfigError(f"VAL_BATCH_SIZE={self.val_batch_size}: expected at least world_size*grad_accum*"
                              f"TRAIN_SEQ_LEN = {per} (one sequence per rank and micro-step)")
        if self.model_dim % self.num_heads != 0:
            raise ConfigError(f"MODEL_DIM={self.model_dim}: expected a multiple of NUM_HEADS={self.num_heads}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ConfigError(f"NUM_KV_HEADS={self.num_kv_heads}: expected a divisor of NUM_HEADS={self.num_heads}")
        if (self.model_dim // self.num_heads) % 2 != 0:
            raise ConfigError(f"MODEL_DIM/NUM_HEADS={self.model_dim // self.num_heads}: expected an even head dim (RoPE)")


# -----------------------------------------------------------------------------
# MUON OPTIMISER
# -----------------------------------------------------------------------------


def zeropower_via_newtonschulz5(G: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately orthogonalise G (push its singular values towards ~1) with a quintic Newton-Schulz
    iteration, in bf16 on CUDA (as the study) and fp32 on CPU (where bf16 matmuls are emulated and ~50x slower);
    the coefficients trade exactness for speed, as in the Muon recipe."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    # G may be a stack (..., rows, cols) of same-shaped matrices: each is normalised and iterated on its own.
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    transposed = X.size(-2) > X.size(-1)
    if transposed:  # iterate on the wide orientation: X @ X^T is then the small Gram matrix
        X = X.mT
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.mT if transposed else X


class Muon(torch.optim.Optimizer):
    """Nesterov momentum whose update is orthogonalised per matrix. With several ranks each rank
    orthogonalises every world_size-th matrix and the updates are summed with one all-reduce. Matrices of one
    shape go through Newton-Schulz as one batch (the same math per matrix, far fewer kernel launches)."""

    def __init__(self, params, lr: float, momentum: float, backend_steps: int, nesterov: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        distributed = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            mine = [i for i, p in enumerate(params) if i % world_size == rank and p.grad is not None]
            if not mine and not distributed:  # (a rank without matrices still joins the all-reduce below)
                continue
            # Momentum for all of this rank's matrices at once: foreach ops, a few launches instead of 3 per matrix.
            for i in mine:
                if "momentum_buffer" not in self.state[params[i]]:
                    self.state[params[i]]["momentum_buffer"] = torch.zeros_like(params[i].grad)
            bufs = [self.state[params[i]]["momentum_buffer"] for i in mine]
            grads = [params[i].grad for i in mine]
            if mine:
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, grads)
            updates = torch._foreach_add(grads, bufs, alpha=group["momentum"]) if group["nesterov"] and mine else bufs
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for j, i in enumerate(mine):
                by_shape.setdefault(tuple(params[i].shape), []).append(j)
            out: dict[int, Tensor] = {}  # param index -> its orthogonalised update (bf16 on CUDA)
            for shape, js in by_shape.items():
                g = zeropower_via_newtonschulz5(torch.stack([updates[j] for j in js]), steps=group["backend_steps"])
                g = g * max(1.0, shape[0] / shape[1]) ** 0.5
                out.update((mine[j], u) for j, u in zip(js, g.unbind(0)))
            if distributed:  # each rank fills its own matrices; one all-reduce gives every rank all updates
                offsets = [0]
                for p in params:
                    offsets.append(offsets[-1] + p.numel())
                flat = torch.zeros(offsets[-1], device=params[0].device,
                                   dtype=torch.bfloat16 if params[0].is_cuda else torch.float32)
                for i, u in out.items():
                    flat[offsets[i]:offsets[i + 1]] = u.reshape(-1)
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                out = {i: flat[offsets[i]:offsets[i + 1]].view_as(p) for i, p in enumerate(params)}
            if out:  # p -= lr * update, in p's dtype (a bf16 update is upcast exactly)
                torch._foreach_add_([params[i] for i in out], list(out.values()), alpha=-group["lr"])


# Tensors that steer the residual stream or a mixer's dynamics rather than map features: trained with Adam at
# SCALAR_LR, kept in fp32, and never quantised.
CONTROL_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights",
                    "A_log", "dt_bias", "o_norm", "conv")


def is_control(name: str) -> bool:
    return any(p in name for p in CONTROL_PATTERNS)


def split_params(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The optimiser split of SPEC.md: 'embed' (Adam, TIED_EMBED_LR), 'matrix' (Muon: 2-D weights inside
    the blocks), 'scalar' (Adam, SCALAR_LR: every vector, scalar and control tensor)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"embed": [], "matrix": [], "scalar": []}
    for name, p in model.named_parameters():
        if name == "tok_emb.weight":
            groups["embed"].append((name, p))
        elif name.startswith("blocks.") and p.ndim == 2 and not is_control(name):
            groups["matrix"].append((name, p))
        else:
            groups["scalar"].append((name, p))
    return groups


def build_optimizers(model: nn.Module, args: Hyperparameters, fused: bool) -> list[torch.optim.Optimizer]:
    groups = split_params(model)
    adam_kw = dict(betas=(args.beta1, args.beta2), eps=args.adam_eps, fused=fused)
    opt_embed = torch.optim.Adam([{"params": [p for _, p in groups["embed"]], "lr": args.tied_embed_lr,
                                   "base_lr": args.tied_embed_lr}], **adam_kw)
    opt_muon = Muon([p for _, p in groups["matrix"]], lr=args.matrix_lr, momentum=args.muon_momentum,
                    backend_steps=args.muon_backend_steps)
    for g in opt_muon.param_groups:
        g["base_lr"] = args.matrix_lr
    opt_scalar = torch.optim.Adam([{"params": [p for _, p in groups["scalar"]], "lr": args.scalar_lr,
                                    "base_lr": args.scalar_lr}], **adam_kw)
    return [opt_embed, opt_muon, opt_scalar]


# -----------------------------------------------------------------------------
# DATA
# -----------------------------------------------------------------------------

SHARD_MAGIC, SHARD_VERSION, SHARD_HEADER_INTS = 20240520, 1, 256


def shard_token_count(path: str | Path) -> int:
    """Validate a shard's header against its size; return its token count."""
    path = Path(path)
    size = path.stat().st_size
    if size < SHARD_HEADER_INTS * 4:
        raise ConfigError(f"shard {path}: {size} bytes, shorter than the {SHARD_HEADER_INTS * 4}-byte header")
    header = np.fromfile(path, dtype="<i4", count=SHARD_HEADER_INTS)
    if int(header[0]) != SHARD_MAGIC:
        raise ConfigError(f"shard {path}: magic {int(header[0])}, expected {SHARD_MAGIC}")
    if int(header[1]) != SHARD_VERSION:
        raise ConfigError(f"shard {path}: version {int(header[1])}, expected {SHARD_VERSION}")
    count = int(header[2])
    if count < 0 or size != SHARD_HEADER_INTS * 4 + 2 * count:
        raise ConfigError(f"shard {path}: header says {count} tokens ({SHARD_HEADER_INTS * 4 + 2 * count} bytes), "
                          f"file has {size} bytes")
    return count


def load_shard(path: str | Path) -> Tensor:
    count = shard_token_count(path)
    tokens = np.fromfile(path, dtype="<u2", count=count, offset=SHARD_HEADER_INTS * 4)
    return torch.from_numpy(tokens.astype(np.int32))


def list_shards(pattern: str, what: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise ConfigError(f"DATA_PATH: no {what} shards match {pattern}")
    return files


class TokenStream:
    """The train shards in order as one endless stream (wrapping around)."""

    def __init__(self, files: list[str]):
        self.files = files
        self.file_idx = 0
        self.tokens = load_shard(files[0])
        self.pos = 0

    def take(self, n: int) -> Tensor:
        parts, left = [], n
        while left > 0:
            if self.pos >= self.tokens.numel():
                self.file_idx = (self.file_idx + 1) % len(self.files)
                self.tokens, self.pos = load_shard(self.files[self.file_idx]), 0
            k = min(left, self.tokens.numel() - self.pos)
            parts.append(self.tokens[self.pos:self.pos + k])
            self.pos, left = self.pos + k, left - k
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class DistributedTokenLoader:
    """Each micro-step takes the next world_size contiguous spans of (local_tokens + 1) tokens; rank r uses
    span r. The spans consumed are the same for any world size, so 1 and N processes see the same batch."""

    def __init__(self, files: list[str], rank: int, world_size: int, device: torch.device):
        self.files, self.rank, self.world_size, self.device = files, rank, world_size, device
        self.stream = TokenStream(files)

    def reset(self) -> None:
        self.stream = TokenStream(self.files)

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[Tensor, Tensor]:
        local_tokens = global_tokens // (self.world_size * grad_accum_steps)
        span = local_tokens + 1
        chunk = self.stream.take(span * self.world_size)
        local = chunk[self.rank * span:(self.rank + 1) * span].to(torch.int64)
        x, y = local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)
        non_blocking = self.device.type == "cuda"
        if non_blocking:
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)


def load_validation_tokens(pattern: str, seq_len: int, max_tokens: int) -> Tensor:
    files = list_shards(pattern, "val")
    tokens = torch.cat([load_shard(f) for f in files])
    if max_tokens > 0:
        tokens = tokens[:max_tokens + 1]
    usable = ((tokens.numel() - 1) // seq_len) * seq_len
    if usable <= 0:
        raise ConfigError(f"DATA_PATH: val split {pattern} has {tokens.numel()} tokens, fewer than one "
                          f"sequence of TRAIN_SEQ_LEN={seq_len} + 1")
    return tokens[:usable + 1]


# -----------------------------------------------------------------------------
# EVALUATION: val_bpb
# -----------------------------------------------------------------------------


def load_tokenizer(path: str, vocab_size: int) -> spm.SentencePieceProcessor:
    if not Path(path).is_file():
        raise ConfigError(f"TOKENIZER_PATH={path}: no such file (expected a SentencePiece .model)")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(path)
    except Exception as e:  # sentencepiece raises a bare OSError/RuntimeError on a bad file
        raise ConfigError(f"TOKENIZER_PATH={path}: not a SentencePiece .model ({type(e).__name__})") from None
    if sp.vocab_size() != vocab_size:
        raise ConfigError(f"VOCAB_SIZE={vocab_size}: the tokenizer {path} has {sp.vocab_size()} pieces")
    return sp


def build_byte_luts(sp: spm.SentencePieceProcessor, vocab_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per token id: UTF-8 bytes of its piece without the leading '▁', whether it has that '▁', and whether
    it is a boundary (control/unknown/unused: 0 bytes, and no space is counted after it)."""
    base_bytes = torch.zeros(vocab_size, dtype=torch.int64)
    has_space = torch.zeros(vocab_size, dtype=torch.bool)
    is_boundary = torch.ones(vocab_size, dtype=torch.bool)
    for i in range(sp.vocab_size()):
        if sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i):
            continue
        is_boundary[i] = False
        if sp.IsByte(i):
            base_bytes[i] = 1
            continue
        piece = sp.IdToPiece(i)
        if piece.startswith("\u2581"):
            has_space[i] = True
            piece = piece[1:]
        base_bytes[i] = len(piece.encode("utf-8"))
    return base_bytes, has_space, is_boundary


def count_target_bytes(prev: Tensor, tgt: Tensor, luts: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    base_bytes, has_space, is_boundary = luts
    return base_bytes[tgt] + (has_space[tgt] & ~is_boundary[prev]).to(torch.int64)


@torch.no_grad()
def eval_val(model: nn.Module, args: Hyperparameters, val_tokens: Tensor, luts: tuple[Tensor, Tensor, Tensor],
             rank: int, world_size: int, grad_accum_steps: int, device: torch.device) -> tuple[float, float]:
    """Mean token loss (nats) and bits per byte over the val split, in float64 sums all-reduced across ranks."""
    seq_len = args.train_seq_len
    n_seqs = (val_tokens.numel() - 1) // seq_len
    batch_seqs = max(1, args.val_batch_size // (world_size * grad_accum_steps * seq_len))
    first, last = n_seqs * rank // world_size, n_seqs * (rank + 1) // world_size
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    tok_sum = torch.zeros((), device=device, dtype=torch.float64)
    byte_sum = torch.zeros((), device=device, dtype=torch.float64)
    luts = tuple(t.to(device) for t in luts)
    model.eval()
    for s in range(first, last, batch_seqs):
        e = min(s + batch_seqs, last)
        chunk = val_tokens[s * seq_len:e * seq_len + 1].to(device=device, dtype=torch.int64)
        x, y = chunk[:-1].reshape(-1, seq_len), chunk[1:].reshape(-1, seq_len)
        torch.compiler.cudagraph_mark_step_begin()
        with autocast_ctx(device):
            loss = model(x, y).detach()
        n = float(y.numel())
        loss_sum += loss.to(torch.float64) * n
        tok_sum += n
        byte_sum += count_target_bytes(x.reshape(-1), y.reshape(-1), luts).to(torch.float64).sum()
    model.train()
    if dist.is_available() and dist.is_initialized():
        for t in (loss_sum, tok_sum, byte_sum):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    val_loss = (loss_sum / tok_sum).item()
    bits_per_token = val_loss / math.log(2.0)
    return val_loss, bits_per_token * (tok_sum / byte_sum).item()


# -----------------------------------------------------------------------------
# QUANTISATION: int8 + zlib export
# -----------------------------------------------------------------------------

QUANT_MIN_NUMEL = 65536  # smaller float tensors are stored as they are (fp32 control, fp16 otherwise)
QUANT_CLIP_Q = 0.9999984  # per-row clip at this quantile of |w|


def quantize_tensor_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """int8 with one fp16 scale per row (2-D) or per tensor; |w| is clipped at a high quantile first so that
    one outlier does not coarsen the whole row. Rounding uses the fp16 scale that is stored."""
    w = w.float()
    if w.ndim == 2:
        clip = torch.quantile(w.abs(), QUANT_CLIP_Q, dim=1, keepdim=True)
    else:
        clip = torch.quantile(w.abs().reshape(-1), QUANT_CLIP_Q).reshape(1)
    scale = (clip / 127.0).clamp_min(1e-7).half()
    q = torch.round(torch.maximum(torch.minimum(w, clip), -clip) / scale.float())
    return q.clamp(-127, 127).to(torch.int8), scale


def quantize_state_dict_int8(state: dict[str, Tensor]) -> tuple[dict, dict[str, int]]:
    obj: dict = {"format": "int8_per_row_v1", "quantized": {}, "scales": {}, "dtypes": {}, "passthrough": {}}
    baseline_bytes = payload_bytes = 0
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        baseline_bytes += t.numel() * t.element_size()
        if t.is_floating_point():
            obj["dtypes"][name] = str(t.dtype).removeprefix("torch.")
        if t.is_floating_point() and t.numel() > QUANT_MIN_NUMEL:
            q, scale = quantize_tensor_int8(t)
            obj["quantized"][name], obj["scales"][name] = q, scale
            payload_bytes += q.numel() + 2 * scale.numel()
        else:
            if t.is_floating_point():
                t = t.float() if is_control(name) else t.half()
            obj["passthrough"][name] = t
            payload_bytes += t.numel() * t.element_size()
    return obj, {"baseline_bytes": baseline_bytes, "payload_bytes": payload_bytes}


def dequantize_state_dict_int8(obj: dict) -> dict[str, Tensor]:
    if obj.get("format") != "int8_per_row_v1":
        raise ValueError(f"unknown quantised format {obj.get('format')!r}")
    out: dict[str, Tensor] = {}
    for name, q in obj["quantized"].items():
        dtype = getattr(torch, obj["dtypes"][name])
        out[name] = (q.float() * obj["scales"][name].float()).to(dtype)
    for name, t in obj["passthrough"].items():
        out[name] = t.to(getattr(torch, obj["dtypes"][name])) if name in obj["dtypes"] else t
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name, then rename: a crash never leaves a half-written artifact under the name."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def serialize(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# -----------------------------------------------------------------------------
# MODEL
# -----------------------------------------------------------------------------


def autocast_ctx(device: torch.device):
    # bf16 autocast on CUDA as in the study; plain fp32 on CPU (exact, and faster there than emulated bf16).
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        device_type="cpu", enabled=False)


def rms_norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """fp32 master weight, cast to the activation dtype at use."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        if zero_init:
            nn.init.zeros_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim),
                             persistent=False)

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), self.inv_freq)
        return freqs.cos()[None, :, None].to(dtype), freqs.sin()[None, :, None].to(dtype)  # (1, T, 1, D/2)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class SplitLinear(torch.autograd.Function):
    """F.linear(x, cat(w_1..w_n)).split: one matmul forward; the backward sums one matmul per piece for dx
    instead of concatenating the pieces' gradients: inductor writes such a cat as per-column where-branches that
    evaluate every piece's elementwise backward (RMSNorm, RoPE, SiLU, ...) on all columns (PERF_NOTES, v3 profile).
    Under autocast it casts x and the weights to the autocast dtype and saves those copies, as autocast's linear
    does; the pieces' dx are summed in fp32 (or wider) and each gradient is returned in its input's dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, *weights: Tensor) -> tuple[Tensor, ...]:
        dev = x.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        xc, wc = x.to(dt), [w.to(dt) for w in weights]
        ctx.save_for_backward(xc, *wc)
        ctx.dtypes = (x.dtype, [w.dtype for w in weights])
        return F.linear(xc, torch.cat(wc)).split([w.size(0) for w in wc], dim=-1)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor, ...]:
        xc, *wc = ctx.saved_tensors
        x_dtype, w_dtypes = ctx.dtypes
        grads = [g.to(xc.dtype) for g in grads]
        acc = torch.promote_types(xc.dtype, torch.float32)
        dx = sum((g @ w).to(acc) for g, w in zip(grads, wc)).to(x_dtype)
        x2 = xc.reshape(-1, xc.size(-1))
        return (dx, *((g.reshape(-1, g.size(-1)).t() @ x2).to(d) for g, d in zip(grads, w_dtypes)))


SDPA_NATIVE_GQA = True  # set by configure_attention: False where the chosen backend lacks enable_gqa
FA4_OP = None  # set by configure_attention: FlashAttention-4's causal attention op where ATTN_BACKEND=fa4 runs


def register_fa4_op() -> str | None:
    """FlashAttention-4 (the flash-attn-4 package: CuTe DSL kernels, Hopper forward and backward) as a custom op
    with its backward, so that torch.compile keeps the model one graph (FA4's own autograd.Function would break
    it). Sets FA4_OP; returns None when done, else why not. q, k, v and the output are (B, T, H, D), as the model
    holds them; GQA is native. The op is registered once per process (both scripts register the same one)."""
    global FA4_OP
    try:
        from flash_attn.cute.interface import _flash_attn_bwd, _flash_attn_fwd
    except Exception as e:  # not installed, or installed without its CUDA libraries
        return f"{type(e).__name__}: {e}"
    if not hasattr(torch.ops.gpt_fa4, "attn_fwd"):
        @torch.library.custom_op("gpt_fa4::attn_fwd", mutates_args=())
        def fwd(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
            out, lse = _flash_attn_fwd(q, k, v, softmax_scale=scale, causal=True, return_lse=True)[:2]
            return out.contiguous(), lse.contiguous()  # the layouts the fake promises

        @fwd.register_fake
        def _(q, k, v, scale):
            B, T, H, _ = q.shape
            return q.new_empty(B, T, H, v.size(-1)), q.new_empty(B, H, T, dtype=torch.float32)

        @torch.library.custom_op("gpt_fa4::attn_bwd", mutates_args=())
        def bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                scale: float) -> tuple[Tensor, Tensor, Tensor]:
            dq, dk, dv = _flash_attn_bwd(q, k, v, out, do, lse, scale, True)[:3]
            return dq.contiguous(), dk.contiguous(), dv.contiguous()

        @bwd.register_fake
        def _(do, q, k, v, out, lse, scale):
            return tuple(t.new_empty(t.shape) for t in (q, k, v))

        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs[:3], *output)
            ctx.scale = inputs[3]

        def backward(ctx, do, dlse):  # lse is not used downstream: its gradient is ignored
            return (*torch.ops.gpt_fa4.attn_bwd(do, *ctx.saved_tensors, ctx.scale), None)

        fwd.register_autograd(backward, setup_context=setup_context)
    FA4_OP = torch.ops.gpt_fa4.attn_fwd
    return None


class CausalSelfAttention(nn.Module):
    """GQA attention: per-head RMSNorm of q and k, RoPE, a learned per-head query gain, causal SDPA."""

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, rope_base: float, qk_gain_init: float):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, dim // num_heads
        kv_dim = num_kv_heads * self.head_dim
        self.c_q = CastedLinear(dim, dim)
        self.c_k = CastedLinear(dim, kv_dim)
        self.c_v = CastedLinear(dim, kv_dim)
        self.proj = CastedLinear(dim, dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((num_heads,), qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(self.head_dim, rope_base)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        # One matmul for q|k|v; the weights stay three matrices (Muon orthogonalises each one on its own).
        q, k, v = SplitLinear.apply(x, self.c_q.weight, self.c_k.weight, self.c_v.weight)
        q = q.reshape(B, T, self.num_heads, self.head_dim)
        k = k.reshape(B, T, self.num_kv_heads, self.head_dim)
        v = v.reshape(B, T, self.num_kv_heads, self.head_dim)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = self.rotary(T, x.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, None, :, None]
        if FA4_OP is not None:  # ATTN_BACKEND=fa4: (B, T, H, D) in and out, no transposes
            return self.proj(FA4_OP(q, k, v, self.head_dim ** -0.5)[0].reshape(B, T, C))
        # (B, H, T, D) views of (B, T, H, D) data, taken last: inductor lays out its norm/RoPE kernels' outputs
        # in their own index order, so q and k stay (B, T, H, D) in memory, SDPA's output follows q's layout,
        # and y.transpose(1, 2).reshape below is a view, not a copy (PERF_NOTES v16).
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.num_kv_heads != self.num_heads and not SDPA_NATIVE_GQA:  # the backend takes no GQA flag
            rep = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           enable_gqa=self.num_kv_heads != self.num_heads and SDPA_NATIVE_GQA)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class ReluSquaredLinear(torch.autograd.Function):
    """relu(h)^2 W^T that keeps h, not relu(h)^2, for the backward and recomputes relu(h)^2 there for W's gradient
    (MLP_RECOMPUTE=1): one MLP-wide tensor less per layer, same values as autograd's. The recompute is spelled
    clamp_min / multiply: spelled as the forward, torch.compile's CSE would merge it back into the saved tensor."""

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(h, w)
        return F.linear(F.relu(h).square(), w)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, Tensor]:
        h, w = ctx.saved_tensors
        r = h.clamp_min(0)
        dh = (dy @ w) * (2 * r)
        dw = dy.reshape(-1, dy.size(-1)).t() @ (r * r).reshape(-1, r.size(-1))
        return dh, dw


class MLP(nn.Module):
    def __init__(self, dim: int, mult: int, recompute: bool = False):
        super().__init__()
        self.fc = CastedLinear(dim, mult * dim)
        self.proj = CastedLinear(mult * dim, dim, zero_init=True)
        self.recompute = recompute

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if self.recompute:
            return ReluSquaredLinear.apply(h, self.proj.weight.to(h.dtype))
        return self.proj(F.relu(h).square())


class Block(nn.Module):
    def __init__(self, dim: int, mixer: nn.Module, mlp_mult: int, mlp_recompute: bool = False):
        super().__init__()
        self.mixer = mixer
        self.mlp = MLP(dim, mlp_mult, mlp_recompute)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.mixer(rms_norm(x))
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))


class GPT(nn.Module):
    """Tied embedding -> RMSNorm (x0) -> U-Net of blocks (first half pushes skips, second half pops them)
    -> RMSNorm -> tied head with a tanh soft-cap -> fp32 cross-entropy."""

    def __init__(self, args: Hyperparameters):
        super().__init__()
        dim = args.model_dim
        self.logit_softcap = args.logit_softcap
        self.tok_emb = nn.Embedding(args.vocab_size, dim)
        nn.init.normal_(self.tok_emb.weight, std=args.tied_embed_init_std)
        self.num_encoder = args.num_layers // 2
        self.num_decoder = args.num_layers - self.num_encoder
        self.skip_weights = nn.Parameter(torch.ones(min(self.num_encoder, self.num_decoder), dim))
        self.blocks = nn.ModuleList([Block(dim, make_mixer(i, args), args.mlp_mult,
                                           args.mlp_recompute == "1" and i < args.mlp_recompute_layers)
                                     for i in range(args.num_layers)])

    def forward(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        x = rms_norm(self.tok_emb(input_ids))
        x0, skips = x, []
        for i in range(self.num_encoder):
            x = self.blocks[i](x, x0)
            skips.append(x)
        for i in range(self.num_decoder):
            if skips:
                x = x + self.skip_weights[i].to(x.dtype) * skips.pop()
            x = self.blocks[self.num_encoder + i](x, x0)
        x = rms_norm(x).reshape(-1, x.size(-1))
        logits = F.linear(x, self.tok_emb.weight.to(x.dtype)).float()
        logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        return F.cross_entropy(logits, target_ids.reshape(-1))


def make_mixer(layer: int, args: Hyperparameters) -> nn.Module:
    return CausalSelfAttention(args.model_dim, args.num_heads, args.num_kv_heads, args.rope_base, args.qk_gain_init)


def prepare_mixers(args: Hyperparameters, device: torch.device) -> list[str]:
    """Check the mixer settings and choose implementations; returns log lines. Attention only here."""
    if args.gdn_layers_raw.strip():
        raise ConfigError(f"GDN_LAYERS={args.gdn_layers_raw!r}: train_gpt.py has no GDN layers "
                          "(use train_gpt_gdn.py), expected it unset or empty")
    return [f"attention_mode:gqa num_heads:{args.num_heads} num_kv_heads:{args.num_kv_heads}"]


# -----------------------------------------------------------------------------
# SETUP: devices, attention backend, logging
# -----------------------------------------------------------------------------


def configure_attention(args: Hyperparameters, device: torch.device) -> str:
    """Pick the attention kernel on CUDA: FlashAttention-4 (ATTN_BACKEND=fa4, the default) where it imports and
    passes a check against SDPA's math backend, else an SDPA backend (cuDNN where fa4 falls back; the study
    enabled flash only). CPU uses PyTorch's SDPA choice. Returns the log line naming the path that runs."""
    global SDPA_NATIVE_GQA, FA4_OP
    FA4_OP = None
    if device.type != "cuda":
        return "sdpa:cpu-default"
    head_dim = args.model_dim // args.num_heads
    backend, fa4_note = args.attn_backend, ""
    if backend == "fa4":
        why = register_fa4_op()
        if why is None:  # one forward and backward of the model's head shapes against fp32 math, on fresh inputs
            x = [torch.randn(1, 256, h, head_dim, device=device, dtype=torch.bfloat16)
                 for h in (args.num_heads, args.num_kv_heads, args.num_kv_heads, args.num_heads)]
            try:
                got = [t.clone().requires_grad_(True) for t in x[:3]]
                ref = [t.float().requires_grad_(True) for t in x[:3]]
                y = FA4_OP(*got, head_dim ** -0.5)[0]
                y.backward(x[3])
                with sdpa_kernel(SDPBackend.MATH):  # whatever backends were enabled before
                    y_ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in ref), is_causal=True,
                                                           enable_gqa=True).transpose(1, 2)
                y_ref.backward(x[3].float())
                err = max(((a.float() - b).norm() / b.norm()).item()
                          for a, b in zip([y] + [t.grad for t in got], [y_ref] + [t.grad for t in ref]))
                why = None if err < 2e-2 else f"check against SDPA math: relative error {err:.1e}"
            except Exception as e:  # a kernel that does not build or run on this GPU
                why = f"{type(e).__name__}: {e}"
        if why is None:
            return f"attention:fa4 flash_attn_cute gqa:native head_dim:{head_dim}"
        FA4_OP, backend = None, "cudnn"
        fa4_note = " fa4:unavailable(" + "_".join(str(why).split())[:160] + ")"
    b = torch.backends.cuda
    want = {"flash": "flash", "cudnn": "cudnn", "efficient": "mem_efficient", "math": "math"}
    if backend == "auto":
        enabled = {"flash": True, "cudnn": True, "mem_efficient": True, "math": True}
    else:
        enabled = {k: k == want[backend] for k in ("flash", "cudnn", "mem_efficient", "math")}
    b.enable_flash_sdp(enabled["flash"])
    b.enable_cudnn_sdp(enabled["cudnn"])
    b.enable_mem_efficient_sdp(enabled["mem_efficient"])
    b.enable_math_sdp(enabled["math"])
    # Older PyTorch builds have no GQA in cuDNN's SDPA: probe once (forward and backward, the model's head
    # shapes) and expand K/V to all heads only where the backend refuses enable_gqa.
    q = torch.randn(1, args.num_heads, 128, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    kv = torch.randn(1, args.num_kv_heads, 128, head_dim, device=device, dtype=torch.bfloat16)
    try:
        F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True).sum().backward()
        SDPA_NATIVE_GQA = True
    except RuntimeError:
        SDPA_NATIVE_GQA = False
    return "sdp_backends:" + " ".join(f"{k}={v}" for k, v in
                                      (("cudnn", enabled["cudnn"]), ("flash", enabled["flash"]),
                                       ("mem_efficient", enabled["mem_efficient"]), ("math", enabled["math"]))) + \
        f" gqa:{'native' if SDPA_NATIVE_GQA else 'expanded_kv'}" + fa4_note


class Logger:
    """Master rank writes logs/<RUN_ID>.txt line by line (flushed) and echoes to stdout."""

    def __init__(self, path: Path | None):
        self.f = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(path, "a", encoding="utf-8")

    def __call__(self, msg: str, console: bool = True) -> None:
        if self.f is None:
            return
        if console:
            print(msg, flush=True)
        self.f.write(msg + "\n")
        self.f.flush()


def environment_report() -> str:
    lines = [f"Running Python {sys.version}", f"Running PyTorch {torch.__version__}"]
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20)
        lines.append(smi.stdout.rstrip() if smi.returncode == 0 else "nvidia-smi: failed")
    except (OSError, subprocess.SubprocessError):
        lines.append("nvidia-smi: not available")
    return "\n".join(lines)


def config_name(cfg) -> str:
    """A triton.Config as e.g. BV32_w4_s2: its kwargs, warps, stages, and rN where it caps registers."""
    return "_".join([f"{k}{v}" for k, v in cfg.kwargs.items()] + [f"w{cfg.num_warps}", f"s{cfg.num_stages}"]
                    + ([f"r{cfg.maxnreg}"] if getattr(cfg, "maxnreg", None) else []))


def autotune_picks() -> str:
    """Every Triton autotuner that has run in this process (FLA's kernels and ours) and its pick, as
    module.kernel=config (a/b where shapes got different picks), sorted. Each run tunes at its first step on a noisy
    clock, so two runs of the same code can pick differently and differ in step time by more than a kernel change
    (twenty-eighth session: 642 and 655 ms at 32k for one code); this line tells the two causes apart in an A/B."""
    if "triton" not in sys.modules:
        return "none (Triton not imported)"
    import gc
    from triton.runtime.autotuner import Autotuner
    picks = set()
    try:  # a diagnostic line: never the reason a run loses its artifact and final score
        # type(o), not isinstance(o, ...), which runs the object's own __class__: on a dead weakref.proxy that raised
        # ReferenceError (an H200 run), on some of torch's deprecated objects it warns
        tuners = [o for o in gc.get_objects() if issubclass(type(o), Autotuner)]
        for tuner in tuners:  # cache: key -> pick, for lists of several configs; best_config: set by every launch
            chosen = list(tuner.cache.values()) or [c for c in [getattr(tuner, "best_config", None)] if c is not None]
            if chosen:
                fn = tuner.base_fn
                names = "/".join(sorted({config_name(c) for c in chosen}))
                picks.add(f"{fn.__module__.removeprefix('fla.ops.')}.{fn.__name__}={names}")
    except Exception as e:
        return f"unavailable ({type(e).__name__}: {e})"
    return " ".join(sorted(picks)) or "none"


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def lr_multiplier(args: Hyperparameters, step: int, elapsed_ms: float, max_wallclock_ms: float | None) -> float:
    """Constant, then linear warm-down to 0 over the last WARMDOWN_ITERS steps; under a wall-clock cap the
    warm-down starts when the remaining time equals WARMDOWN_ITERS steps at the mean step time so far."""
    if args.warmdown_iters <= 0:
        return 1.0
    if max_wallclock_ms is None:
        start = max(args.iterations - args.warmdown_iters, 0)
        return max((args.iterations - step) / args.warmdown_iters, 0.0) if step >= start else 1.0
    step_ms = elapsed_ms / max(step, 1)
    warmdown_ms = args.warmdown_iters * step_ms
    remaining_ms = max(max_wallclock_ms - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


# -----------------------------------------------------------------------------
# TRAINING LOOP
# -----------------------------------------------------------------------------


class GradSum:
    """Sums the micro-steps' gradients into each parameter's .grad (kept allocated) with a few foreach launches
    per micro-step: torch.autograd.grad, then one copy (first micro-step) or add per dtype. `.backward()` would
    launch AccumulateGrad's add once per parameter and micro-step instead (736 per baseline step, 1,184 for
    the hybrid: PERF_NOTES v17). The same fp32 sums in the same order. Not under DDP, whose all-reduce hooks
    ride on AccumulateGrad."""

    def __init__(self, params):
        self.params = [p for p in params if p.requires_grad]
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    def backward(self, loss: Tensor, first: bool) -> None:
        # (allow_unused: a parameter outside the graph, e.g. the empty skip_weights of NUM_LAYERS=1, keeps its zeros)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        by_dtype: dict[torch.dtype, tuple[list[Tensor], list[Tensor]]] = {}
        for p, g in zip(self.params, grads):  # one launch per dtype needs same-dtype lists
            if g is None:
                continue
            dst, src = by_dtype.setdefault(p.grad.dtype, ([], []))
            dst.append(p.grad)
            src.append(g)
        for dst, src in by_dtype.values():
            (torch._foreach_copy_ if first else torch._foreach_add_)(dst, src)


def main() -> None:
    # Distributed and device setup, and every check of the input, before any long work.
    world_size = env_int("WORLD_SIZE", 1, 1)
    rank = env_int("RANK", 0, 0, world_size - 1)
    local_rank = env_int("LOCAL_RANK", 0, 0)
    if 8 % world_size != 0:
        raise ConfigError(f"WORLD_SIZE={world_size}: expected a divisor of 8 (1, 2, 4 or 8 processes)")
    # One process needs no process group: plain training, and no gloo/DDP teardown at exit (which can hang).
    distributed = world_size > 1
    grad_accum_steps = 8 // world_size
    args = Hyperparameters()
    args.check_batch(world_size, grad_accum_steps)
    use_cuda = torch.cuda.is_available() and os.environ.get("FORCE_CPU", "0") != "1"
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    do_compile = args.compile == "1" or (args.compile == "auto" and use_cuda)
    graphs_ok = do_compile and use_cuda and not distributed
    cuda_graphs = graphs_ok if args.cuda_graphs == "auto" else args.cuda_graphs == "1"
    if cuda_graphs and not graphs_ok:
        raise ConfigError(f"CUDA_GRAPHS=1: needs CUDA, COMPILE on and one process (device:{device.type} "
                          f"COMPILE={args.compile} WORLD_SIZE={world_size}); use CUDA_GRAPHS=auto or 0")
    step_overlap = (use_cuda and not distributed) if args.step_overlap == "auto" else args.step_overlap == "1"
    if step_overlap and distributed:  # the cap's all-reduce would wait on the step enqueued ahead
        raise ConfigError(f"STEP_OVERLAP=1: needs one process (WORLD_SIZE={world_size}); use STEP_OVERLAP=auto or 0")
    mixer_lines = prepare_mixers(args, device)
    sp = load_tokenizer(args.tokenizer_path, args.vocab_size)
    train_files = list_shards(os.path.join(args.data_path, "*_train_*.bin"), "train")
    for f in train_files:
        shard_token_count(f)
    val_pattern = os.path.join(args.data_path, "*_val_*.bin")
    val_tokens = load_validation_tokens(val_pattern, args.train_seq_len, args.val_max_tokens)
    luts = build_byte_luts(sp, args.vocab_size)

    if distributed:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    master = rank == 0
    log = Logger(Path("logs") / f"{args.run_id}.txt" if master else None)
    log(Path(__file__).read_text(encoding="utf-8"), console=False)
    log("=" * 100, console=False)
    log(environment_report(), console=False)
    log("=" * 100, console=False)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if use_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    attn_line = configure_attention(args, device)

    # Model: linear weights stay fp32 (cast at use); on CUDA the embedding is bf16 as in the study.
    base_model = GPT(args).to(device)
    if use_cuda:
        base_model.tok_emb.to(torch.bfloat16)
    torch._functorch.config.activation_memory_budget = args.compile_memory_budget
    compiled = torch.compile(base_model, dynamic=False, mode="reduce-overhead" if cuda_graphs else None) \
        if do_compile else base_model
    model = DDP(compiled, device_ids=[local_rank] if use_cuda else None, broadcast_buffers=False) \
        if distributed else compiled
    optimizers = build_optimizers(base_model, args, fused=use_cuda)
    # One process sums the gradients itself into grads that stay allocated (under CUDA graphs the backward graph's
    # outputs are overwritten by its next replay); DDP (no CUDA graphs) accumulates them through .backward().
    grad_sum = None if distributed else GradSum(base_model.parameters())
    n_params = sum(p.numel() for p in base_model.parameters())
    n_recompute = sum(block.mlp.recompute for block in base_model.blocks)

    dataset_name = Path(args.data_path.rstrip("/")).name
    card = torch.cuda.get_device_name(device) if use_cuda else "cpu"
    log(f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path={args.tokenizer_path}")
    log(f"train_loader:dataset:{dataset_name} train_shards:{len(train_files)}")
    log(f"val_loader:shards pattern={val_pattern} tokens:{val_tokens.numel() - 1}")
    log(f"dataset:{dataset_name} data_path:{args.data_path}")
    log(f"device:{device.type} card:{card.replace(' ', '_')} torch:{torch.__version__} compile:{do_compile} "
        f"compile_memory_budget:{args.compile_memory_budget:g} cuda_graphs:{cuda_graphs} "
        f"mlp_recompute:{args.mlp_recompute} mlp_recompute_blocks:{n_recompute} "
        f"step_overlap:{int(step_overlap)}")
    log(f"model:{args.model_kind}")
    log(f"model_params:{n_params}")
    log(f"world_size:{world_size} grad_accum_steps:{grad_accum_steps}")
    log(attn_line)
    for line in mixer_lines:
        log(line)
    log(f"tie_embeddings:True embed_lr:{args.tied_embed_lr} head_lr:0.0 matrix_lr:{args.matrix_lr} "
        f"scalar_lr:{args.scalar_lr}")
    log(f"train_batch_tokens:{args.train_batch_tokens} train_seq_len:{args.train_seq_len} "
        f"iterations:{args.iterations} warmup_steps:{args.warmup_steps} "
        f"max_wallclock_seconds:{args.max_wallclock_seconds:.3f}")
    log(f"seed:{args.seed}")

    loader = DistributedTokenLoader(train_files, rank, world_size, device)

    def sync() -> None:
        if use_cuda:
            torch.cuda.synchronize(device)

    def accumulate() -> Tensor:
        """Enqueue one step's micro-steps (forward and backward); returns its mean loss, not synced."""
        if grad_sum is None:  # (GradSum overwrites the grads in its first micro-step)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for micro in range(grad_accum_steps):
            x, y = loader.next_batch(args.train_batch_tokens, args.train_seq_len, grad_accum_steps)
            # DDP averages gradients over ranks; only the last micro-step needs to all-reduce them.
            last_micro = micro == grad_accum_steps - 1
            with (model.no_sync() if distributed and not last_micro else contextlib.nullcontext()):
                torch.compiler.cudagraph_mark_step_begin()  # a new replay (a no-op without CUDA graphs)
                with autocast_ctx(device):
                    loss = model(x, y)
                total += loss.detach()
                if grad_sum is None:
                    (loss / grad_accum_steps).backward()
                else:
                    grad_sum.backward(loss / grad_accum_steps, first=micro == 0)
        if distributed:
            dist.all_reduce(total, op=dist.ReduceOp.AVG)
        return total / grad_accum_steps

    def apply(step: int, lr_scale: float) -> None:
        """Enqueue the optimiser step on the accumulated gradients."""
        frac = min(step / args.muon_momentum_warmup_steps, 1.0) if args.muon_momentum_warmup_steps > 0 else 1.0
        momentum = (1 - frac) * args.muon_momentum_warmup_start + frac * args.muon_momentum
        for group in optimizers[1].param_groups:
            group["momentum"] = momentum
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * lr_scale
        if args.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(base_model.parameters(), args.grad_clip_norm)
        for opt in optimizers:
            opt.step()

    # Warm-up: compile and prime kernels on real steps, then restore the exact initial state.
    if args.warmup_steps > 0:
        init_model = copy.deepcopy(base_model.state_dict())
        init_opts = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
        for i in range(args.warmup_steps):
            accumulate()
            apply(0, 1.0)
            log(f"warmup_step:{i + 1}/{args.warmup_steps}")
        base_model.load_state_dict(init_model)
        for opt, state in zip(optimizers, init_opts):
            opt.load_state_dict(state)
        loader.reset()
        del init_model, init_opts

    max_wallclock_ms = 1000.0 * args.max_wallclock_seconds if args.max_wallclock_seconds > 0 else None
    training_time_ms, step, stop_after_step = 0.0, 0, None
    # Each step's loss comes back through a pinned buffer and an event, so that reading it does not wait for
    # the next step's work when STEP_OVERLAP has enqueued that already (`.item()` would drain the stream).
    loss_host = torch.zeros((), pin_memory=use_cuda)
    ahead = None  # STEP_OVERLAP: the mean loss of the next step, whose forward/backward are enqueued

    def gpu_mark() -> torch.cuda.Event | None:
        """On CUDA, a timed event enqueued now: a step's end is read on the GPU's clock, so the CPU's time spent
        enqueueing the step ahead (it blocks once CUDA's launch queue is full) is not counted in it."""
        event = torch.cuda.Event(enable_timing=True) if use_cuda else None
        if event is not None:
            event.record()
        return event

    def start_clock() -> tuple[float, torch.cuda.Event | None]:
        """A train-time segment starts: the GPU drained, so its clock at the event is the wall clock now."""
        sync()
        return time.perf_counter(), gpu_mark()

    def val_due(s: int) -> bool:  # a validation (or the end) comes before training step s+1
        return s == args.iterations or (args.val_loss_every > 0 and s % args.val_loss_every == 0)

    t0, t0_event = start_clock()
    approx_ms = 0.0  # train time at the end of the last step: sets the next step's learning rate
    while True:
        last_step = step == args.iterations or (stop_after_step is not None and step >= stop_after_step)
        if last_step or val_due(step):
            sync()
            training_time_ms += 1000.0 * (time.perf_counter() - t0)
            val_loss, val_bpb = eval_val(model, args, val_tokens, luts, rank, world_size, grad_accum_steps, device)
            log(f"step:{step}/{args.iterations} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} "
                f"train_time:{training_time_ms:.0f}ms step_avg:{training_time_ms / max(step, 1):.2f}ms")
            t0, t0_event = start_clock()
            approx_ms = training_time_ms
        if last_step:
            if stop_after_step is not None and step < args.iterations:
                log(f"stopping_early: wallclock_cap train_time:{training_time_ms:.0f}ms "
                    f"step:{step}/{args.iterations}")
            break
        train_loss = ahead if ahead is not None else accumulate()
        apply(step, lr_multiplier(args, step, approx_ms, max_wallclock_ms))
        loss_host.copy_(train_loss, non_blocking=use_cuda)
        done = gpu_mark()
        step += 1
        # The next step's forward/backward need only the weights this step leaves (stream order): enqueue them
        # now unless a validation or the end comes first; its learning rate is set after this step's time is read.
        ahead = accumulate() if step_overlap and not val_due(step) else None
        if done is not None:
            done.synchronize()  # this step's work only: the GPU goes on with the step enqueued ahead
        loss_value = loss_host.item()  # one wait per step: cheap next to a step, and catches NaN at once
        approx_ms = training_time_ms + (t0_event.elapsed_time(done) if done is not None else
                                        1000.0 * (time.perf_counter() - t0))
        reached_cap = max_wallclock_ms is not None and approx_ms >= max_wallclock_ms
        if distributed and max_wallclock_ms is not None:  # every rank stops at the same step
            flag = torch.tensor(int(reached_cap), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            reached_cap = bool(flag.item())
        if step <= 10 or step % args.train_log_every == 0 or reached_cap or not math.isfinite(loss_value):
            log(f"step:{step}/{args.iterations} train_loss:{loss_value:.4f} train_time:{approx_ms:.0f}ms "
                f"step_avg:{approx_ms / step:.2f}ms")
        if not math.isfinite(loss_value):
            log(f"error: non-finite train_loss ({loss_value}) at step {step}; stopping (lower the learning "
                "rates or check the data)")
            if distributed:
                dist.destroy_process_group()
            sys.exit(3)
        if stop_after_step is None and reached_cap:
            stop_after_step = step
            if ahead is not None:  # the step enqueued ahead is dropped: never applied, its time not counted
                training_time_ms, ahead = approx_ms, None
                t0, t0_event = start_clock()

    if use_cuda:
        log(f"peak memory allocated: {torch.cuda.max_memory_allocated(device) // 2**20} MiB "
            f"reserved: {torch.cuda.max_memory_reserved(device) // 2**20} MiB")
        if args.gdn_impl == "fla":  # after the timed steps: this walks every object in the process
            log(f"autotune_picks: {autotune_picks()}")

    # Export: raw state dict, then int8 + zlib; read the artifact back and score the round-tripped model.
    out_dir = Path(args.output_dir)
    raw_path, quant_path = out_dir / "final_model.pt", out_dir / "final_model.int8.ptz"
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in base_model.state_dict().items()}
        raw = serialize(state)
        atomic_write_bytes(raw_path, raw)
        log(f"Serialized model: {len(raw)} bytes")
        quant_obj, stats = quantize_state_dict_int8(state)
        quant_raw = serialize(quant_obj)
        blob = zlib.compress(quant_raw, level=9)
        atomic_write_bytes(quant_path, blob)
        log(f"Serialized model int8+zlib: {len(blob)} bytes (payload:{stats['payload_bytes']} "
            f"raw_torch:{len(quant_raw)} payload_ratio:{stats['baseline_bytes'] / max(stats['payload_bytes'], 1):.2f}x)")
    if distributed:
        dist.barrier()
    quant_state = torch.load(io.BytesIO(zlib.decompress(quant_path.read_bytes())), map_location="cpu")
    base_model.load_state_dict(dequantize_state_dict_int8(quant_state), strict=True)
    sync()
    t_eval = time.perf_counter()
    q_loss, q_bpb = eval_val(model, args, val_tokens, luts, rank, world_size, grad_accum_steps, device)
    sync()
    log(f"final_int8_zlib_roundtrip val_loss:{q_loss:.4f} val_bpb:{q_bpb:.4f} "
        f"eval_time:{1000.0 * (time.perf_counter() - t_eval):.0f}ms")
    log(f"final_int8_zlib_roundtrip_exact val_loss:{q_loss:.8f} val_bpb:{q_bpb:.8f}")
    if distributed:
        del model  # free DDP's reducer (and its pending work) before the process group goes
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        fail(str(e))
