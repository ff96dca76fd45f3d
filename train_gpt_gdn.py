"""
train_gpt_gdn.py: the recipe of train_gpt.py with 7 of its 9 attention mixers replaced by Gated DeltaNet
(linear recurrent) layers (blocks 0,1,2,4,5,6,8; width 448). Trained with Muon + Adam under a wall-clock cap
and scored by val bits-per-byte after an int8+zlib round trip. On CUDA the gated delta rule runs in fla-core's
chunk kernel; elsewhere in our own chunked PyTorch implementation (GDN_IMPL=auto|fla|torch).

Configured by environment variables only (see Hyperparameters). Run as `python3 train_gpt.py` or
`torchrun --standalone --nproc_per_node=N train_gpt.py` (N divides 8). Runs on CUDA (NCCL) or on CPU (gloo).
The parts shared with train_gpt_gdn.py are kept identical; tests/test_scripts_identical.py checks it.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import inspect
import io
import math
import os
import re
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
    "MODEL_KIND": "hybrid",
    "RUN_ID": "hybrid_gdn_run",
    "MODEL_DIM": 448,
    "WARMDOWN_ITERS": 300,
    "GDN_LAYERS": "0,1,2,4,5,6,8",
    "MLP_RECOMPUTE": "1",  # pays for GDN_SAVE_WV's w and v_new (PERF_NOTES v18)
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


# -----------------------------------------------------------------------------
# GATED DELTANET MIXER (the hybrid's linear-recurrent layers)
# -----------------------------------------------------------------------------


def parse_gdn_layers(raw: str, num_layers: int) -> list[int]:
    try:
        layers = [int(x) for x in raw.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise ConfigError(f"GDN_LAYERS={raw!r}: expected comma-separated block indices like 0,1,2,4") from None
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad or len(set(layers)) != len(layers):
        raise ConfigError(f"GDN_LAYERS={raw!r}: expected distinct indices in [0, {num_layers - 1}] "
                          f"(NUM_LAYERS={num_layers})")
    return sorted(layers)


def gdn_dims(args: Hyperparameters) -> tuple[int, int, int]:
    """(heads, key head dim, value head dim): dk = round(dim/H * ratio), dv = round(dk * expand_v)."""
    heads = args.gdn_n_heads or args.num_heads
    if args.model_dim % heads != 0:
        raise ConfigError(f"GDN_N_HEADS={heads}: expected a divisor of MODEL_DIM={args.model_dim}")
    dk = round(args.model_dim / heads * args.gdn_head_dim_ratio)
    dv = round(dk * args.gdn_expand_v)
    if dk < 1 or dv < 1:
        raise ConfigError(f"GDN_HEAD_DIM_RATIO={args.gdn_head_dim_ratio} GDN_EXPAND_V={args.gdn_expand_v}: "
                          f"head dims dk={dk} dv={dv}, expected both >= 1")
    return heads, dk, dv


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(|x|^2 + eps) over the last dim, computed in (at least) fp32, as FLA's l2norm kernel."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(x.dtype)


def gated_delta_rule_chunked(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float,
                             chunk_size: int = 64) -> Tensor:
    """The gated delta rule, S_t = exp(g_t) (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T, o_t = scale S_t^T q_t,
    computed chunk by chunk in fp32 (our own implementation; exact to rounding against the recurrence).
    Shapes: q, k (B, T, H, dk) already L2-normalised; v (B, T, H, dv); g (log decay), beta (B, T, H).

    Within a chunk, with G_t the cumulative log decay from the chunk start, the pseudo-values
    U~ = (I + A)^-1 (diag(b) V - diag(b e^G) K S0), A_ts = b_t e^(G_t - G_s) k_t.k_s (s < t), give
    O = scale (e^G Q S0 + (Q K^T * e^(G_t - G_s), s <= t) U~) and S_end = e^G_C S0 + (K e^(G_C - G))^T U~.
    Everything but the state hand-off between chunks is batched over (B, H, chunks)."""
    B, T, H, dk = q.shape
    dv, out_dtype, C = v.shape[-1], v.dtype, chunk_size
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v, g, beta = (t.float() for t in (q, k, v, g, beta))
        pad = (-T) % C  # zero-padding at the end cannot change earlier outputs (causal)
        if pad:
            q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
            g, beta = (F.pad(t, (0, 0, 0, pad)) for t in (g, beta))
        N = (T + pad) // C
        q, k, v = (t.reshape(B, N, C, H, -1).permute(0, 3, 1, 2, 4) for t in (q, k, v))  # (B, H, N, C, d)
        g, beta = (t.reshape(B, N, C, H).permute(0, 3, 1, 2) for t in (g, beta))  # (B, H, N, C)
        G = g.cumsum(-1)
        diff = G[..., :, None] - G[..., None, :]  # G_t - G_s; masked before exp so it never overflows
        idx = torch.arange(C, device=q.device)
        # The diagonal exp(G_t - G_t) = 1 is built as a constant: through autograd it would send +X and -X to the
        # same G_t, which cancel in fp32 only to ~1e-7 X and spoil the (tiny) decay gradient under fast decay.
        decay_strict = torch.where(idx[:, None] > idx[None, :], diff, float("-inf")).exp()
        decay = decay_strict + torch.eye(C, device=q.device)
        kb = k * beta[..., None]
        A = (kb @ k.transpose(-1, -2)) * decay_strict
        rhs = torch.cat((v * beta[..., None], kb * G.exp()[..., None]), dim=-1)
        sol = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)  # (I + A)^-1 rhs
        U, W = sol[..., :dv], sol[..., dv:]
        P = (q @ k.transpose(-1, -2)) * decay * scale
        q_dec = q * (G.exp() * scale)[..., None]
        k_dec = k * (G[..., -1:] - G).exp()[..., None]
        chunk_decay = G[..., -1].exp()[..., None, None]  # (B, H, N, 1, 1)
        S = q.new_zeros(B, H, dk, dv)
        outs = []
        for n in range(N):
            u = U[:, :, n] - W[:, :, n] @ S
            outs.append(q_dec[:, :, n] @ S + P[:, :, n] @ u)
            S = chunk_decay[:, :, n] * S + k_dec[:, :, n].transpose(-1, -2) @ u
        o = torch.stack(outs, dim=2).permute(0, 2, 3, 1, 4).reshape(B, N * C, H, dv)[:, :T]
    return o.to(out_dtype)


@torch.compiler.disable  # FLA's own autograd op runs outside the compiled graph
def fla_gated_delta_rule_public(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float) -> Tensor:
    """FLA's public op (an autograd.Function marked torch.compiler.disable: the compiled graph breaks at it).
    q and k already L2-normalised; beta already in (0, 2) (fla-core 0.6.0 takes it so with allow_neg_eigval off)."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    o, _ = chunk_gated_delta_rule(q, k, v, g, beta, scale=scale)
    return o


def fla_signature_problem(checks) -> str | None:
    """checks: (function, keyword parameters we pass it) pairs. The first function of this fla-core that lacks one
    of them, as a reason not to register an op over FLA's internals; None when all take what we pass."""
    for fn, params in checks:
        if not params <= set(inspect.signature(fn).parameters):
            return f"fla's {fn.__name__} has another signature"
    return None


def register_fla_gdn_op() -> str | None:
    """Register FLA's chunked gated delta rule (its forward and backward functions) as a torch custom op, so
    that torch.compile traces the whole model as one graph. Returns None when done, else why not (then the
    public op runs, with one graph break per GDN layer)."""
    global GDN_OP
    common = {"q", "k", "v", "g", "beta", "scale", "initial_state"}
    try:
        from fla.ops.gated_delta_rule.chunk import chunk_gated_delta_rule_bwd, chunk_gated_delta_rule_fwd
        why = fla_signature_problem(((chunk_gated_delta_rule_fwd, common | {"output_final_state"}),
                                     (chunk_gated_delta_rule_bwd, common | {"A", "do", "dht"})))
        if why:
            return why
    except Exception as e:  # another fla-core version, or none
        return f"{type(e).__name__}: {e}"
    if GDN_OP is not None:
        return None

    @torch.library.custom_op("gdn_repro::chunk_gdr_fwd", mutates_args=())
    def fwd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v, g, beta = (t.contiguous() for t in (q, k, v, g, beta))
        g_cum, o, A, _, _, _ = chunk_gated_delta_rule_fwd(q=q, k=k, v=v, g=g, beta=beta, scale=scale,
                                                          initial_state=None, output_final_state=False)
        return o.to(q.dtype), A, g_cum  # A: the chunks' solved (I + A)^-1; g_cum: chunk-local cumulative log2 decay

    @fwd.register_fake
    def _(q, k, v, g, beta, scale):
        B, T, H, _ = k.shape
        return (v.new_empty(B, T, H, v.size(-1), dtype=q.dtype), k.new_empty(B, T, H, 64),
                g.new_empty(B, T, H, dtype=torch.float32))

    @torch.library.custom_op("gdn_repro::chunk_gdr_bwd", mutates_args=())
    def bwd(q: Tensor, k: Tensor, v: Tensor, g_cum: Tensor, beta: Tensor, A: Tensor, do: Tensor,
            scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        q, k, v, beta, do = (t.contiguous() for t in (q, k, v, beta, do))
        dq, dk, dv, db, dg, _, _, _ = chunk_gated_delta_rule_bwd(q=q, k=k, v=v, g=g_cum, beta=beta, A=A,
                                                                 scale=scale, initial_state=None, do=do, dht=None)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg.float(), db.to(beta.dtype)

    @bwd.register_fake
    def _(q, k, v, g_cum, beta, A, do, scale):
        return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(g_cum),
                torch.empty_like(beta))

    def setup_context(ctx, inputs, output):
        q, k, v, g, beta, scale = inputs
        _, A, g_cum = output
        ctx.save_for_backward(q, k, v, g_cum, beta, A)
        ctx.scale = scale

    def backward(ctx, do, dA, dg_cum):
        q, k, v, g_cum, beta, A = ctx.saved_tensors
        dq, dk, dv, dg, db = bwd(q, k, v, g_cum, beta, A, do, ctx.scale)
        return dq, dk, dv, dg, db, None

    fwd.register_autograd(backward, setup_context=setup_context)
    GDN_OP = fwd
    return None


GDN_OP = None  # the custom op, once registered (CUDA with fla-core 0.6.x)


def build_state_kernels() -> dict:
    """Our Triton kernels for the gated delta rule's two state recurrences, FLA's chunk_gated_delta_rule_fwd_h and
    bwd_dhu without initial or final state (GDN_STATE_CHAIN, v22), and for v_new = u - w h from saved chunk states
    (GDN_SAVE_WV=0). Both recurrences are affine in the state, with per-chunk matrices that do not depend on it:
        forward   h_{c+1} = A_c h_c + B_c,     A_c = 2^g_last I - k~^T w,   B_c = k~^T u,   k~ = k 2^(g_last - g)
        backward  D_{c-1} = A_c^T D_c + R_c,   R_c = (q 2^g)^T do scale - w^T dv
    (D_c: the gradient of the state after chunk c, FLA's dh[c]; g: the chunk-local cumulative log2 decay). So a
    chunk-parallel kernel forms A_c and B_c (or R_c) in fp32, a chain kernel walks the chunks with one tf32
    (K x K) @ (K x BV) product a step (FLA's walk chains two products forward, three backward, each a step of
    512 at 32k), and a chunk-parallel epilogue forms v_new = u - w h_c or dv2 = dv + 2^(g_last - g) (k D_c) with
    bf16 operands and fp32 accumulation, as FLA does. Layouts and dtypes are FLA's: (B, T, H, .) inputs, states
    (B, T/64, H, K, V) in k's dtype. Returns {"v_new", "fwd_h", "bwd_dhu", "prep", "kernels"}."""
    import triton
    import triton.language as tl

    # v31: BV 128 (one value tile at V = 84) was v22-v30's one launch; on an H200 the backward runs faster in two
    # 64-column tiles (sm_90 build: 192 -> 122 registers a thread), the forward 1.5x slower (A_c formed in one of
    # them, k and w loaded by both). v32: the value tile is the fastest grid axis, so a chunk's tiles run side by
    # side and find its k, w, q in L2, and the backward's later tiles skip k: 0.80x of v30's launch at 2x32768
    # (v31's order 0.91x). Each value column's products are the same in every config; 32-column tiles and 8 warps
    # were slower at every study shape (PERF_NOTES v31, v32)
    @triton.autotune(configs=[triton.Config({"BV": bv}, num_warps=4, num_stages=1) for bv in (64, 128)],
                     key=["K", "V", "BACKWARD", "IEEE"])
    @triton.jit
    def prep_kernel(k, w, x, do, dv, g, A, Bm, scale, T, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BACKWARD: tl.constexpr,
                    IEEE: tl.constexpr):
        # one program per (value tile, chunk, sequence x head): A_c (in the first value tile's program) and the
        # tile's columns of B_c (x = u) or R_c (x = q)
        i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
        t = i_t * BT + tl.arange(0, BT)
        kk, vv = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
        mt, mk, mv = t < T, kk < K, vv < V
        rows = (i_b * T + t) * H + i_h  # (b, t, h) row of every input
        mtk, mtv = mt[:, None] & mk[None, :], mt[:, None] & mv[None, :]
        g_last = tl.load(g + (i_b * T + tl.minimum(i_t * BT + BT, T) - 1) * H + i_h)
        b_g = tl.load(g + rows, mask=mt, other=0.0)
        if BACKWARD:  # backward, k~ only feeds A_c: the later tiles' programs skip loading k
            mkk = mtk & (i_v == 0)
        else:
            mkk = mtk
        b_k = tl.load(k + rows[:, None] * K + kk[None, :], mask=mkk, other=0.0)
        b_w = tl.load(w + rows[:, None] * K + kk[None, :], mask=mtk, other=0.0)
        # k~ rounded to k's dtype, as FLA rounds its gated v_new before the state update
        b_ke = (b_k.to(tl.float32) * tl.where(mt, tl.exp2(g_last - b_g), 0.0)[:, None]).to(b_k.dtype)
        chunk = (i_b * NT + i_t) * H + i_h
        if i_v == 0:
            if IEEE:  # fp32 operands, or Triton's CPU interpreter (no bf16 dot): full fp32 products, not TF32
                kw = tl.dot(tl.trans(b_ke).to(tl.float32), b_w.to(tl.float32), input_precision="ieee")
            else:
                kw = tl.dot(tl.trans(b_ke), b_w)
            b_a = tl.exp2(g_last) * (kk[:, None] == kk[None, :]).to(tl.float32) - kw
            tl.store(A + chunk * K * K + kk[:, None] * K + kk[None, :], b_a, mask=mk[:, None] & mk[None, :])
        if BACKWARD:
            b_q = tl.load(x + rows[:, None] * K + kk[None, :], mask=mtk, other=0.0)
            b_qg = b_q.to(tl.float32) * tl.where(mt, tl.exp2(b_g), 0.0)[:, None]  # fp32, as FLA's dhu keeps it
            b_do = tl.load(do + rows[:, None] * V + vv[None, :], mask=mtv, other=0.0)
            b_dv = tl.load(dv + rows[:, None] * V + vv[None, :], mask=mtv, other=0.0)
            if IEEE:
                b_b = tl.dot(tl.trans(b_qg), b_do.to(tl.float32), input_precision="ieee") * scale
                b_b -= tl.dot(tl.trans(b_w).to(tl.float32), b_dv.to(tl.float32), input_precision="ieee")
            else:
                b_b = tl.dot(tl.trans(b_qg), b_do.to(tl.float32)) * scale - tl.dot(tl.trans(b_w), b_dv)
        else:
            b_u = tl.load(x + rows[:, None] * V + vv[None, :], mask=mtv, other=0.0)
            if IEEE:
                b_b = tl.dot(tl.trans(b_ke).to(tl.float32), b_u.to(tl.float32), input_precision="ieee")
            else:
                b_b = tl.dot(tl.trans(b_ke), b_u)
        tl.store(Bm + chunk * K * V + kk[:, None] * V + vv[None, :], b_b, mask=mk[:, None] & mv[None, :])

    @triton.autotune(configs=[triton.Config({"BV": bv}, num_warps=nw, num_stages=ns)
                              for bv in (16, 32, 64) for nw in (2, 4) for ns in (2, 3, 4)],
                     key=["K", "V", "W", "BK", "REVERSE", "IEEE", "MODE"])
    @triton.jit
    def chain_kernel(A, Bm, S, X, NT, NC, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, W: tl.constexpr,
                     BK: tl.constexpr, BV: tl.constexpr, REVERSE: tl.constexpr, IEEE: tl.constexpr,
                     MODE: tl.constexpr):
        # one program per (column tile, segment of NC chunks, sequence x head): s <- A_c s + B_c over the segment's
        # chunks ascending, or s <- A_c^T s + B_c descending (REVERSE). MODE 0: one segment (NC >= NT) from s = 0,
        # storing s before each chunk's update at S[c]. With segments (GDN_CHAIN_SEGMENT), MODE 1 runs each
        # segment from s = [0 | I] over W = V + K columns (B_c only in the first V) and stores only its end,
        # [e | M] (M: the product of its A_c's), at X[seg]; MODE 2 runs each from its true start state X[seg]
        # (chain_scan_kernel's), storing as MODE 0. Chains NC steps long instead of NT, on NT / NC times the programs.
        i_v, i_s, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
        NSEG = tl.cdiv(NT, NC)
        kk, vv = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
        mk, mb = kk < K, (kk < K)[:, None] & (vv < V)[None, :]
        a_off = kk[None, :] * K + kk[:, None] if REVERSE else kk[:, None] * K + kk[None, :]  # A^T: swapped strides
        b_off = kk[:, None] * V + vv[None, :]
        head = i_b * NT * H + i_h  # chunk c of this sequence and head: head + c * H
        c0 = i_s * NC
        n = tl.minimum(NC, NT - c0)
        x_off = (((i_b * NSEG + i_s) * H + i_h) * K + kk[:, None]) * W + vv[None, :]
        if MODE == 1:
            s = (kk[:, None] == (vv - V)[None, :]).to(tl.float32)
        elif MODE == 2:
            s = tl.load(X + x_off, mask=mb, other=0.0)
        else:
            s = tl.zeros([BK, BV], dtype=tl.float32)
        # B_c is loaded one step ahead: Triton pipelines A_c (a dot operand) through shared memory but not B_c (the
        # dot's accumulator), whose load latency would otherwise stand in every step of the chain (v23)
        b_b = tl.load(Bm + (head + (c0 + n - 1 if REVERSE else c0) * H) * K * V + b_off, mask=mb, other=0.0)
        for i in range(n):
            c = c0 + n - 1 - i if REVERSE else c0 + i
            chunk = head + c * H
            if MODE != 1:
                tl.store(S + chunk * K * V + b_off, s.to(S.dtype.element_ty), mask=mb)
            i_next = tl.minimum(i + 1, n - 1)  # the last step reloads its own B: in bounds, unused
            c_next = c0 + n - 1 - i_next if REVERSE else c0 + i_next
            b_next = tl.load(Bm + (head + c_next * H) * K * V + b_off, mask=mb, other=0.0)
            b_a = tl.load(A + chunk * K * K + a_off, mask=mk[:, None] & mk[None, :], other=0.0)
            s = tl.dot(b_a, s, input_precision="ieee" if IEEE else "tf32") + b_b
            b_b = b_next
        if MODE == 1:
            tl.store(X + x_off, s, mask=mk[:, None] & (vv < W)[None, :])

    @triton.jit
    def chain_scan_kernel(X, Y, NSEG, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                          BV: tl.constexpr, REVERSE: tl.constexpr, IEEE: tl.constexpr):
        # the segments' true start states from their maps [e | M] (chain_kernel MODE 1): x = 0, then x <- M x + e
        # over the segments in the chain's order, storing x before each at Y[seg]; products in 3xTF32 (~fp32 on
        # tensor cores: "ieee" compiled to an FMA loop that spilled 14 KB a thread, ~150 us a step on an H200)
        i_v, i_bh = tl.program_id(0), tl.program_id(1)
        i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
        kk, vv = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
        mk, mb = kk < K, (kk < K)[:, None] & (vv < V)[None, :]
        x = tl.zeros([BK, BV], dtype=tl.float32)
        for j in range(NSEG):
            seg = NSEG - 1 - j if REVERSE else j
            row = ((i_b * NSEG + seg) * H + i_h) * K + kk[:, None]  # rows of X[seg] (K x (V + K)) and Y[seg] (K x V)
            tl.store(Y + row * V + vv[None, :], x, mask=mb)
            b_m = tl.load(X + row * (V + K) + V + kk[None, :], mask=mk[:, None] & mk[None, :], other=0.0)
            b_e = tl.load(X + row * (V + K) + vv[None, :], mask=mb, other=0.0)
            x = tl.dot(b_m, x, input_precision="ieee" if IEEE else "tf32x3") + b_e

    @triton.jit
    def epilogue_kernel(X, S, base, g, out, T, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                        BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BACKWARD: tl.constexpr,
                        IEEE: tl.constexpr):
        # out = base - X S_c (u - w h_c) or base + 2^(g_last - g) (X S_c) (dv + gated k D_c), X S_c with S in its
        # stored dtype and fp32 accumulation; one program per (value tile, chunk, sequence x head)
        i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
        t = i_t * BT + tl.arange(0, BT)
        kk, vv = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
        mt, mk, mv = t < T, kk < K, vv < V
        rows = (i_b * T + t) * H + i_h
        b_x = tl.load(X + rows[:, None] * K + kk[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        b_s = tl.load(S + (((i_b * NT + i_t) * H + i_h) * K + kk[:, None]) * V + vv[None, :],
                      mask=mk[:, None] & mv[None, :], other=0.0)
        if IEEE:
            xs = tl.dot(b_x.to(tl.float32), b_s.to(tl.float32), input_precision="ieee")
        else:
            xs = tl.dot(b_x, b_s.to(b_x.dtype))
        m = mt[:, None] & mv[None, :]
        b_base = tl.load(base + rows[:, None] * V + vv[None, :], mask=m, other=0.0).to(tl.float32)
        if BACKWARD:
            g_last = tl.load(g + (i_b * T + tl.minimum(i_t * BT + BT, T) - 1) * H + i_h)
            res = b_base + xs * tl.where(mt, tl.exp2(g_last - tl.load(g + rows, mask=mt, other=0.0)), 0.0)[:, None]
        else:
            res = b_base - xs
        tl.store(out + rows[:, None] * V + vv[None, :], res.to(out.dtype.element_ty), mask=m)

    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    C = 64  # FLA's chunk size

    def dims(x: Tensor) -> tuple[int, int, int, int, int, int, bool]:
        B, T, H, K = x.shape
        return B, T, H, K, triton.cdiv(T, C), max(16, triton.next_power_of_2(K)), \
            x.dtype == torch.float32 or interpreted

    def epilogue(X: Tensor, S: Tensor, base: Tensor, g: Tensor, backward: bool) -> Tensor:
        B, T, H, K, NT, BK, ieee = dims(X)
        V = base.size(-1)
        BV = min(64, max(16, triton.next_power_of_2(V)))
        out = torch.empty_like(base)
        epilogue_kernel[(triton.cdiv(V, BV), NT, B * H)](X, S, base, g, out, T, NT, H=H, K=K, V=V, BT=C, BK=BK,
                                                         BV=BV, BACKWARD=backward, IEEE=ieee)
        return out

    def prep(k: Tensor, w: Tensor, x: Tensor, do: Tensor, dv: Tensor, g: Tensor, V: int, scale: float,
             backward: bool) -> tuple[Tensor, Tensor]:
        """Each chunk's (A_c, B_c) (forward, x = u) or (A_c, R_c) (backward, x = q), fp32 (B, T/64, H, K, K / V)."""
        B, T, H, K, NT, BK, ieee = dims(k)
        A = torch.empty(B, NT, H, K, K, device=k.device, dtype=torch.float32)
        Bm = torch.empty(B, NT, H, K, V, device=k.device, dtype=torch.float32)
        prep_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), NT, B * H)](
            k, w, x, do, dv, g, A, Bm, scale, T, NT, H=H, K=K, V=V, BT=C, BK=BK, BACKWARD=backward, IEEE=ieee)
        return A, Bm

    def chain(k: Tensor, w: Tensor, x: Tensor, do: Tensor, dv: Tensor, g: Tensor, V: int, scale: float,
              backward: bool, segment: int) -> Tensor:
        B, T, H, K, NT, BK, ieee = dims(k)
        A, Bm = prep(k, w, x, do, dv, g, V, scale, backward)
        S = torch.empty(B, NT, H, K, V, device=k.device, dtype=k.dtype)
        NC = segment if 0 < segment < NT else NT  # chunks per segment
        nseg = triton.cdiv(NT, NC)
        if nseg == 1:
            chain_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), 1, B * H)](
                A, Bm, S, S, NT, NT, H=H, K=K, V=V, W=V, BK=BK, REVERSE=backward, IEEE=ieee, MODE=0)
            return S
        X = torch.empty(B, nseg, H, K, V + K, device=k.device, dtype=torch.float32)  # each segment's [e | M]
        chain_kernel[lambda meta: (triton.cdiv(V + K, meta["BV"]), nseg, B * H)](
            A, Bm, S, X, NT, NC, H=H, K=K, V=V, W=V + K, BK=BK, REVERSE=backward, IEEE=ieee, MODE=1)
        Y = torch.empty(B, nseg, H, K, V, device=k.device, dtype=torch.float32)  # each segment's start state
        BV = min(32, max(16, triton.next_power_of_2(V)))
        chain_scan_kernel[(triton.cdiv(V, BV), B * H)](X, Y, nseg, H=H, K=K, V=V, BK=BK, BV=BV, REVERSE=backward,
                                                       IEEE=ieee)
        chain_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), nseg, B * H)](
            A, Bm, S, Y, NT, NC, H=H, K=K, V=V, W=V, BK=BK, REVERSE=backward, IEEE=ieee, MODE=2)
        return S

    def v_new(u: Tensor, w: Tensor, h: Tensor) -> Tensor:
        """u - w h per chunk from saved states h; w (B, T, H, K), u (B, T, H, V) contiguous."""
        return epilogue(w, h, u, u, backward=False)  # the g argument is not read forward

    def fwd_h(k: Tensor, w: Tensor, u: Tensor, g: Tensor, segment: int = 0) -> tuple[Tensor, Tensor]:
        """(h, the state at each chunk's start in k's dtype; v_new = u - w h like u); g fp32 (B, T, H); segment:
        chunks per chain segment (GDN_CHAIN_SEGMENT; 0: one chain per sequence)."""
        k, w, u, g = (t.contiguous() for t in (k, w, u, g))
        h = chain(k, w, u, u, u, g, u.size(-1), 1.0, backward=False, segment=segment)
        return h, epilogue(w, h, u, g, backward=False)

    def bwd_dhu(q: Tensor, k: Tensor, w: Tensor, g: Tensor, do: Tensor, dv: Tensor, scale: float,
                segment: int = 0) -> tuple[Tensor, Tensor]:
        """(dh, the gradient of the state after each chunk in q's dtype; dv2 = dv + 2^(g_last - g) (k dh))."""
        q, k, w, g, do, dv = (t.contiguous() for t in (q, k, w, g, do, dv))
        dh = chain(k, w, q, do, dv, g, do.size(-1), scale, backward=True, segment=segment)
        return dh, epilogue(k, dh, dv, g, backward=True)

    return {"v_new": v_new, "fwd_h": fwd_h, "bwd_dhu": bwd_dhu, "prep": prep,
            "kernels": {"prep": prep_kernel, "chain": chain_kernel, "scan": chain_scan_kernel,
                        "epilogue": epilogue_kernel}}


def launch_chunk_kernel(kernel, name: str, k: Tensor, v: Tensor, states: tuple[Tensor, ...], ieee: bool | None,
                        *args) -> None:
    """Launch one of our per-chunk GDN kernels (build_wy_kernel, build_dqkwg_kernel, build_fwd_o_kernel) over
    (64-row chunks, sequence x head) after checking what they assume: one key tile (K <= 64) and one (K, V) state
    per chunk in each of `states`. args: the kernel's tensors (and scale); T and the head sizes are added. ieee:
    fp32 products (default for fp32 inputs and under Triton's interpreter); False runs the bf16 path's code on any
    dtype (the tests, on fp32 under the interpreter)."""
    B, T, H, K = k.shape
    V, BT, NT = v.size(-1), 64, -(-k.size(1) // 64)
    if K > 64 or any(tuple(s.shape) != (B, NT, H, K, V) for s in states):
        raise ValueError(f"{name}: needs K <= 64" + (" and states (B, T/64, H, K, V)" if states else "") +
                         f", got K={K}" + (f", states {[tuple(s.shape) for s in states]}" if states else ""))
    if ieee is None:
        ieee = k.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"
    kernel[(NT, B * H)](*args, T, H=H, K=K, V=V, BT=BT, BK=max(16, 1 << (K - 1).bit_length()), IEEE=ieee)


def build_wy_kernel() -> dict:
    """Our Triton kernel for the backward of FLA's WY representation (its prepare_wy_repr_bwd), with the state op's
    tail folded in (GDN_WY_BWD=1, v28 candidate). Per chunk of 64 rows, FLA's forward has
        L = strictly lower part of diag(beta) (k k^T) * 2^(g_i - g_j),   A = (I + L)^-1 (stored, k's dtype)
        w = A (beta 2^g k),   u = A (beta v)
    so, given dw and du:
        dA = dw (beta 2^g k)^T + du (beta v)^T;   dk += beta 2^g (A^T dw);   dv = beta (A^T du)
        dL = -(A^T dA A^T) on the strictly lower part (A's diagonal and upper part do not depend on L)
        M = dL * 2^(g_i - g_j):  dk += beta (M k) + M^T (beta k);  dbeta = sums of (A^T dw) 2^g k, (A^T du) v, (M k) k
        dg += rowsum(A^T dw * beta 2^g k) + rowsum(dL * L) - colsum(dL * L)
    (dg w.r.t. g in natural-log units, FLA's convention). The kernel then adds dqkwg's dk and dg and sums dg from each
    row to its chunk's end (the state op's reverse chunk-local cumsum): FLA's kernel, which writes its dk and reads
    it back, two adds over dk and dg and a cumsum kernel become one pass, dk rounded once. Needs K <= 64 (one
    tile). Layouts are FLA's (B, T, H, .); bf16 operands with fp32 accumulation as FLA's kernel, or fp32 (IEEE)
    for fp32 inputs and under Triton's interpreter. Returns {"wy_bwd", "kernels"}."""
    import triton
    import triton.language as tl

    # ptxas, sm_90, dk 42 / dv 84: 4 warps take 255 registers a thread (no spills), 8 warps 223-225; capped at
    # 168 / 128 they spill 216-524 bytes for twice the programs resident (the timing picks)
    @triton.autotune(configs=[triton.Config({"BV": bv}, num_warps=nw, num_stages=2, maxnreg=mr)
                              for bv in (32, 64) for nw, mr in ((4, None), (8, None), (4, 168), (8, 128))],
                     key=["H", "K", "V", "BK", "IEEE"])
    @triton.jit
    def wy_bwd_kernel(k, v, beta, g, A, dw, du, dk_in, dg_in, dk, dv, db, dg, T, H: tl.constexpr, K: tl.constexpr,
                      V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IEEE: tl.constexpr):
        # one program per (chunk, sequence x head). Few (BT x BT) fp32 tiles live at once: FLA's kernel runs at 255
        # registers a thread; the value part goes first, the A-dependent part frees A before the L part, and tile
        # offsets are int32 from one int64 row base.
        i_t, i_bh = tl.program_id(0), tl.program_id(1)
        i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
        c, kk = tl.arange(0, BT), tl.arange(0, BK)
        mt, mk = i_t * BT + c < T, kk < K
        row0 = (i_b * T + i_t * BT) * H + i_h  # the chunk's first (b, t, h) row
        mtk = mt[:, None] & mk[None, :]
        ok = c[:, None] * (H * K) + kk[None, :]  # a (t, k) tile's offsets from its first row
        b_beta = tl.load(beta + row0 + c * H, mask=mt, other=0.0).to(tl.float32)
        b_g = tl.load(g + row0 + c * H, mask=mt, other=0.0).to(tl.float32)
        b_A = tl.load(A + row0 * BT + c[:, None] * (H * BT) + c[None, :], mask=mt[:, None] & mt[None, :], other=0.0)
        if IEEE:
            b_A = b_A.to(tl.float32)
        dA = tl.zeros([BT, BT], dtype=tl.float32)
        db_acc = tl.zeros([BT], dtype=tl.float32)
        for i_v in range(tl.cdiv(V, BV)):  # u = A (beta v): BV of v's columns at a time
            vv = i_v * BV + tl.arange(0, BV)
            mtv = mt[:, None] & (vv < V)[None, :]
            ov = c[:, None] * (H * V) + vv[None, :]
            b_v = tl.load(v + row0 * V + ov, mask=mtv, other=0.0)
            b_du = tl.load(du + row0 * V + ov, mask=mtv, other=0.0)
            vf = b_v.to(tl.float32)
            if IEEE:
                dA += tl.dot(b_du.to(tl.float32), tl.trans(vf * b_beta[:, None]), input_precision="ieee")
                dvb = tl.dot(tl.trans(b_A), b_du.to(tl.float32), input_precision="ieee")
            else:
                dA = tl.dot(b_du, tl.trans((vf * b_beta[:, None]).to(b_du.dtype)), dA)
                dvb = tl.dot(tl.trans(b_A), b_du.to(b_A.dtype))
            tl.store(dv + row0 * V + ov, (dvb * b_beta[:, None]).to(dv.dtype.element_ty), mask=mtv)
            db_acc += tl.sum(dvb * vf, 1)
        # w = A (beta 2^g k)
        b_k = tl.load(k + row0 * K + ok, mask=mtk, other=0.0)
        b_dw = tl.load(dw + row0 * K + ok, mask=mtk, other=0.0)
        b_e = tl.exp2(b_g)
        kbe = b_k.to(tl.float32) * (b_beta * b_e)[:, None]
        if IEEE:
            dA += tl.dot(b_dw.to(tl.float32), tl.trans(kbe), input_precision="ieee")
            dkbe = tl.dot(tl.trans(b_A), b_dw.to(tl.float32), input_precision="ieee")
        else:
            dA = tl.dot(b_dw, tl.trans(kbe.to(b_dw.dtype)), dA)
            dkbe = tl.dot(tl.trans(b_A), b_dw.to(b_A.dtype))
        dk_acc = dkbe * (b_beta * b_e)[:, None]
        db_acc += tl.sum(dkbe * b_k.to(tl.float32), 1) * b_e
        dg_acc = tl.sum(dkbe * kbe, 1)
        # through A = (I + L)^-1: dL = -(A^T dA A^T) on the strictly lower part
        lower = (c[:, None] > c[None, :]) & mt[:, None] & mt[None, :]
        dA = tl.where(lower, dA, 0.0)
        if IEEE:
            dL = tl.dot(tl.trans(b_A), tl.dot(dA, tl.trans(b_A), input_precision="ieee"), input_precision="ieee")
        else:
            dL = tl.dot(tl.trans(b_A), tl.dot(dA.to(b_A.dtype), tl.trans(b_A)).to(b_A.dtype))
        # L = beta_i (k_i . k_j) 2^(g_i - g_j): M = dL 2^(g_i - g_j) (k's dtype, as FLA's kernel rounds it)
        M = tl.where(lower, -dL * tl.exp2(b_g[:, None] - b_g[None, :]), 0.0)
        if IEEE:
            kf = b_k.to(tl.float32)
            Mk = tl.dot(M, kf, input_precision="ieee")
            dk_acc += Mk * b_beta[:, None]
            db_acc += tl.sum(Mk * kf, 1)
            dk_acc += tl.dot(tl.trans(M), kf * b_beta[:, None], input_precision="ieee")
            LdL = M * tl.dot(kf, tl.trans(kf), input_precision="ieee") * b_beta[:, None]  # dL * L
        else:
            M = M.to(b_k.dtype)
            Mk = tl.dot(M, b_k)
            dk_acc += Mk * b_beta[:, None]
            db_acc += tl.sum(Mk * b_k.to(tl.float32), 1)
            # M^T (beta k) as ((beta k)^T M)^T: a transposed bf16 copy of a product's result fed to another product
            # is what Triton 3.4-3.7.0 miscompiles on Hopper (FLA issue 640); the fp32 result transposed is not
            dk_acc += tl.trans(tl.dot(tl.trans((b_k.to(tl.float32) * b_beta[:, None]).to(b_k.dtype)), M))
            LdL = M.to(tl.float32) * tl.dot(b_k, tl.trans(b_k)) * b_beta[:, None]
        dg_acc += tl.sum(LdL, 1) - tl.sum(LdL, 0)
        dk_acc += tl.load(dk_in + row0 * K + ok, mask=mtk, other=0.0).to(tl.float32)
        tl.store(dk + row0 * K + ok, dk_acc.to(dk.dtype.element_ty), mask=mtk)
        tl.store(db + row0 + c * H, db_acc.to(db.dtype.element_ty), mask=mt)
        dg_acc = tl.where(mt, dg_acc + tl.load(dg_in + row0 + c * H, mask=mt, other=0.0).to(tl.float32), 0.0)
        dg_rev = tl.sum(tl.where(c[None, :] >= c[:, None], dg_acc[None, :], 0.0), 1)  # row i: rows i.. of its chunk
        tl.store(dg + row0 + c * H, dg_rev.to(dg.dtype.element_ty), mask=mt)

    def wy_bwd(k: Tensor, v: Tensor, beta: Tensor, g: Tensor, A: Tensor, dw: Tensor, du: Tensor, dk_in: Tensor,
               dg_in: Tensor, ieee: bool | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(dk, dv, dbeta, dg): dk = dk_in + the WY part, in k's dtype; dv like v; dbeta like beta; dg fp32, the
        reverse chunk-local cumsum of dg_in + the WY part. g: fp32 (B, T, H) chunk-local cumulative log2 decay; A:
        (B, T, H, 64) as FLA's forward stores it. ieee: as launch_chunk_kernel's."""
        k, v, beta, g, A, dw, du, dk_in, dg_in = (t.contiguous() for t in (k, v, beta, g, A, dw, du, dk_in, dg_in))
        if A.size(-1) != 64:
            raise ValueError(f"wy_bwd: needs 64-row chunks, got A with {A.size(-1)} columns")
        dk, dv, db = torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta)
        dg = torch.empty(k.shape[:3], device=k.device, dtype=torch.float32)
        launch_chunk_kernel(wy_bwd_kernel, "wy_bwd", k, v, (), ieee, k, v, beta, g, A, dw, du, dk_in, dg_in, dk, dv,
                            db, dg)
        return dk, dv, db, dg

    return {"wy_bwd": wy_bwd, "kernels": {"wy_bwd": wy_bwd_kernel}}


def build_dqkwg_kernel() -> dict:
    """Our Triton kernel for FLA's chunk_bwd_dqkwg (GDN_DQKWG=1, v29 candidate): the gradients of q, k, w and g
    through one chunk's output o = scale (2^g q) h + scale (causal(q k^T) 2^(g_i - g_j)) v_new, the state it passes
    on, h' = 2^g_last h + (2^(g_last - g) k)^T v_new, and v_new = u - w h (dv: the gradient at v_new, after the
    state recurrence's backward; dh: at h'), with h and v_new held:
        ds = causal(do v_new^T) 2^(g_i - g_j) scale;   dq = scale 2^g (do h^T) + ds k
        dk = 2^(g_last - g) (v_new dh^T) + ds^T q;     dw = -(dv h^T)
        dg = rowsum(dq q) - rowsum(dk k); the chunk's last row also + 2^g_last sum(h dh)
             + sum(2^(g_last - g) (v_new dh^T) k)
    (natural-log units, before the reverse chunk cumsum, as FLA's kernel returns them). On Hopper with Triton 3.4 up
    to 3.7.0 FLA's own Triton kernel is refused (FLA issue 640: ds^T q takes a transposed bf16 copy of a product's
    result) and FLA runs a TileLang kernel instead (4.6x its memory floor at 32k, PERF_NOTES v21); ours forms that
    term as (q^T ds)^T. One program per (64-row chunk, sequence x head), value columns BV at a time; needs K <= 64.
    bf16 operands with fp32 accumulation, or fp32 (IEEE) for fp32 inputs and under the interpreter. Returns
    {"dqkwg", "kernels"}."""
    import triton
    import triton.language as tl

    @triton.autotune(configs=[triton.Config({"BV": bv}, num_warps=nw, num_stages=ns)
                              for bv in (32, 64, 128) for nw in (4, 8) for ns in (1, 2)],
                     key=["H", "K", "V", "BK", "IEEE"])
    @triton.jit
    def dqkwg_kernel(q, k, v, g, h, do, dh, dv, dq, dk, dw, dg, scale, T, H: tl.constexpr, K: tl.constexpr,
                     V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IEEE: tl.constexpr):
        i_t, i_bh = tl.program_id(0), tl.program_id(1)
        i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
        c, kk = tl.arange(0, BT), tl.arange(0, BK)
        mt, mk = i_t * BT + c < T, kk < K
        row0 = (i_b * T + i_t * BT) * H + i_h  # the chunk's first (b, t, h) row
        mtk = mt[:, None] & mk[None, :]
        ok = c[:, None] * (H * K) + kk[None, :]
        h0 = ((i_b * tl.cdiv(T, BT) + i_t) * H + i_h) * (K * V)  # this chunk's state, (K, V) row-major
        ds = tl.zeros([BT, BT], dtype=tl.float32)
        dq_acc = tl.zeros([BT, BK], dtype=tl.float32)
        dk_acc = tl.zeros([BT, BK], dtype=tl.float32)
        dw_acc = tl.zeros([BT, BK], dtype=tl.float32)
        hdh = tl.zeros([BK], dtype=tl.float32)
        for i_v in range(tl.cdiv(V, BV)):
            vv = i_v * BV + tl.arange(0, BV)
            mtv, mkv = mt[:, None] & (vv < V)[None, :], mk[:, None] & (vv < V)[None, :]
            ov, oh = c[:, None] * (H * V) + vv[None, :], kk[:, None] * V + vv[None, :]
            b_v = tl.load(v + row0 * V + ov, mask=mtv, other=0.0)
            b_do = tl.load(do + row0 * V + ov, mask=mtv, other=0.0)
            b_dv = tl.load(dv + row0 * V + ov, mask=mtv, other=0.0)
            b_h = tl.load(h + h0 + oh, mask=mkv, other=0.0)
            b_dh = tl.load(dh + h0 + oh, mask=mkv, other=0.0)
            hdh += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), 1)
            if IEEE:
                vf, dof, hf = b_v.to(tl.float32), b_do.to(tl.float32), b_h.to(tl.float32)
                ds += tl.dot(dof, tl.trans(vf), input_precision="ieee")
                dq_acc += tl.dot(dof, tl.trans(hf), input_precision="ieee")
                dk_acc += tl.dot(vf, tl.trans(b_dh.to(tl.float32)), input_precision="ieee")
                dw_acc += tl.dot(b_dv.to(tl.float32), tl.trans(hf), input_precision="ieee")
            else:  # operands in v_new's dtype, as FLA's kernel rounds them
                ds = tl.dot(b_do, tl.trans(b_v), ds)
                dq_acc = tl.dot(b_do, tl.trans(b_h.to(b_do.dtype)), dq_acc)
                dk_acc = tl.dot(b_v, tl.trans(b_dh.to(b_v.dtype)), dk_acc)
                dw_acc = tl.dot(b_dv.to(b_v.dtype), tl.trans(b_h.to(b_v.dtype)), dw_acc)
        tl.store(dw + row0 * K + ok, (-dw_acc).to(dw.dtype.element_ty), mask=mtk)
        last = tl.minimum(i_t * BT + BT, T) - 1 - i_t * BT  # the chunk's last row, counted in the chunk
        b_g = tl.load(g + row0 + c * H, mask=mt, other=0.0).to(tl.float32)
        g_last = tl.load(g + row0 + last * H).to(tl.float32)
        b_q = tl.load(q + row0 * K + ok, mask=mtk, other=0.0)
        b_k = tl.load(k + row0 * K + ok, mask=mtk, other=0.0)
        qf, kf = b_q.to(tl.float32), b_k.to(tl.float32)
        dq_acc = dq_acc * (tl.exp2(b_g) * scale)[:, None]
        dk_acc = dk_acc * tl.where(mt, tl.exp2(g_last - b_g), 0.0)[:, None]
        dg_last = tl.sum(hdh) * tl.exp2(g_last) + tl.sum(dk_acc * kf)
        causal = (c[:, None] >= c[None, :]) & mt[:, None] & mt[None, :]
        ds = tl.where(causal, ds * tl.exp2(b_g[:, None] - b_g[None, :]), 0.0) * scale
        if IEEE:
            dq_acc += tl.dot(ds, kf, input_precision="ieee")
            dk_acc += tl.dot(tl.trans(ds), qf, input_precision="ieee")
        else:
            ds16 = ds.to(b_k.dtype)
            dq_acc = tl.dot(ds16, b_k, dq_acc)
            # ds^T q as (q^T ds)^T: a transposed bf16 copy of a product's result fed to another product is what
            # Triton 3.4-3.7.0 miscompiles on Hopper (FLA issue 640); the fp32 result transposed is not
            dk_acc += tl.trans(tl.dot(tl.trans(b_q), ds16))
        dg_row = tl.sum(dq_acc * qf, 1) - tl.sum(dk_acc * kf, 1)
        dg_row = tl.where(c == last, dg_row + dg_last, dg_row)
        tl.store(dq + row0 * K + ok, dq_acc.to(dq.dtype.element_ty), mask=mtk)
        tl.store(dk + row0 * K + ok, dk_acc.to(dk.dtype.element_ty), mask=mtk)
        tl.store(dg + row0 + c * H, dg_row, mask=mt)

    def dqkwg(q: Tensor, k: Tensor, v_new: Tensor, g: Tensor, h: Tensor, do: Tensor, dh: Tensor, dv: Tensor,
              scale: float, ieee: bool | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(dq, dk, dw, dg) as FLA's chunk_bwd_dqkwg(q, k, v_new, do, h, dh, w, g, dv=dv, scale=scale) returns
        them: dq, dk, dw in q's / k's dtype, dg fp32 per row before the reverse chunk cumsum. g: fp32 (B, T, H)
        chunk-local cumulative log2 decay; h, dh: (B, T/64, H, K, V). ieee: as launch_chunk_kernel's."""
        q, k, v_new, g, h, do, dh, dv = (t.contiguous() for t in (q, k, v_new, g, h, do, dh, dv))
        dq, dk, dw = torch.empty_like(q), torch.empty_like(k), torch.empty_like(k)
        dg = torch.empty(k.shape[:3], device=k.device, dtype=torch.float32)
        launch_chunk_kernel(dqkwg_kernel, "dqkwg", k, v_new, (h, dh), ieee,
                            q, k, v_new, g, h, do, dh, dv, dq, dk, dw, dg, scale)
        return dq, dk, dw, dg

    return {"dqkwg": dqkwg, "kernels": {"dqkwg": dqkwg_kernel}}


def build_fwd_o_kernel() -> dict:
    """Our Triton kernel for FLA's chunk_fwd_o (GDN_FWD_O, v30): each chunk's output
        o = scale 2^g (q h) + P v_new,   P = causal(q k^T) 2^(g_i - g_j) scale
    with h the state entering the chunk. FLA's kernel runs one program per (value tile, chunk, sequence x head) and
    forms q k^T again in each (222 us per 32k call against a 75 us memory floor, PERF_NOTES v21); ours runs one
    program per (chunk, sequence x head), forms P once and walks the value columns BV at a time. P takes v_new's
    dtype for its product, as FLA's does; needs K <= 64. Returns {"fwd_o", "kernels"}."""
    import triton
    import triton.language as tl

    # not BV32 with 4 warps and 1 stage: with Triton 3.6.0 its sm_90 build reads shared memory out of bounds
    # (compute-sanitizer: "Invalid __shared__ read of size 1024 bytes") and faults at every shape tried on an H200;
    # the other 11 ran right (PERF_NOTES v30)
    @triton.autotune(configs=[triton.Config({"BV": bv}, num_warps=nw, num_stages=ns)
                              for bv in (32, 64, 128) for nw in (4, 8) for ns in (1, 2) if (bv, nw, ns) != (32, 4, 1)],
                     key=["H", "K", "V", "BK", "IEEE"])
    @triton.jit
    def fwd_o_kernel(q, k, v, h, g, o, scale, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                     BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IEEE: tl.constexpr):
        i_t, i_bh = tl.program_id(0), tl.program_id(1)
        i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
        c, kk = tl.arange(0, BT), tl.arange(0, BK)
        mt, mk = i_t * BT + c < T, kk < K
        row0 = (i_b * T + i_t * BT) * H + i_h  # the chunk's first (b, t, h) row
        mtk = mt[:, None] & mk[None, :]
        ok = c[:, None] * (H * K) + kk[None, :]
        h0 = ((i_b * tl.cdiv(T, BT) + i_t) * H + i_h) * (K * V)  # this chunk's state, (K, V) row-major
        b_q = tl.load(q + row0 * K + ok, mask=mtk, other=0.0)
        b_k = tl.load(k + row0 * K + ok, mask=mtk, other=0.0)
        b_g = tl.load(g + row0 + c * H, mask=mt, other=0.0).to(tl.float32)
        causal = (c[:, None] >= c[None, :]) & mt[:, None] & mt[None, :]
        if IEEE:
            qk = tl.dot(b_q.to(tl.float32), tl.trans(b_k.to(tl.float32)), input_precision="ieee")
        else:
            qk = tl.dot(b_q, tl.trans(b_k))
        P = tl.where(causal, qk * tl.exp2(b_g[:, None] - b_g[None, :]), 0.0) * scale
        if not IEEE:
            P = P.to(v.dtype.element_ty)  # once, not once a value tile
        qscale = tl.exp2(b_g) * scale
        for i_v in range(tl.cdiv(V, BV)):
            vv = i_v * BV + tl.arange(0, BV)
            mtv, mkv = mt[:, None] & (vv < V)[None, :], mk[:, None] & (vv < V)[None, :]
            ov = c[:, None] * (H * V) + vv[None, :]
            b_v = tl.load(v + row0 * V + ov, mask=mtv, other=0.0)
            b_h = tl.load(h + h0 + kk[:, None] * V + vv[None, :], mask=mkv, other=0.0)
            if IEEE:
                acc = tl.dot(b_q.to(tl.float32), b_h.to(tl.float32), input_precision="ieee") * qscale[:, None]
                acc += tl.dot(P, b_v.to(tl.float32), input_precision="ieee")
            else:
                acc = tl.dot(b_q, b_h.to(b_q.dtype)) * qscale[:, None]
                acc = tl.dot(P, b_v, acc)
            tl.store(o + row0 * V + ov, acc.to(o.dtype.element_ty), mask=mtv)

    def fwd_o(q: Tensor, k: Tensor, v_new: Tensor, h: Tensor, g: Tensor, scale: float,
              ieee: bool | None = None) -> Tensor:
        """o as FLA's chunk_fwd_o(q, k, v_new, h, g, scale) returns it (v_new's dtype). g: fp32 (B, T, H) chunk-local
        cumulative log2 decay; h: (B, T/64, H, K, V), the states entering the chunks. ieee: as launch_chunk_kernel's."""
        q, k, v_new, h, g = (t.contiguous() for t in (q, k, v_new, h, g))
        o = torch.empty_like(v_new)
        launch_chunk_kernel(fwd_o_kernel, "fwd_o", k, v_new, (h,), ieee, q, k, v_new, h, g, o, scale)
        return o

    return {"fwd_o": fwd_o, "kernels": {"fwd_o": fwd_o_kernel}}


def register_fla_gdn_state_op() -> str | None:
    """GDN_SAVE_STATE (auto/1): FLA's chunked gated delta rule as a custom op that keeps the chunk states h of its
    forward for the backward, which FLA's own backward recomputes with a second pass of the sequential state
    recurrence (latency-bound: ~5% of the hybrid's 32k step). The backward runs FLA's backward
    kernels in the order of its chunk_gated_delta_rule_bwd, with v_new = u - w h from our kernel instead of that
    pass. Costs h's memory (bf16 B x T/64 x H x dk x dv per layer and micro-batch). With GDN_SAVE_WV it also keeps
    the forward's w and v_new (bf16, B x T x H x (dk + dv)), so that the backward skips FLA's w/u recompute and
    our v_new kernel (v18). With GDN_STATE_CHAIN=1 the two state recurrences are ours (build_state_kernels, v22)
    instead of FLA's fwd_h / bwd_dhu; with bwd only the backward's (auto picks one: state_chain_choice), in
    segments with GDN_CHAIN_SEGMENT. With GDN_WY_BWD the WY backward and the tail after it are ours
    (build_wy_kernel), with GDN_DQKWG the dq/dk/dw/dg kernel (build_dqkwg_kernel), with GDN_FWD_O the forward's
    output kernel (build_fwd_o_kernel). Returns None when registered (as GDN_STATE_OP), else why not."""
    global GDN_STATE_OP
    if GDN_STATE_OP is not None:
        return None
    try:
        from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_bwd_dhu, chunk_gated_delta_rule_fwd_h
        from fla.ops.common.chunk_o import chunk_bwd_dqkwg, chunk_bwd_dv_local, chunk_fwd_o
        from fla.ops.gated_delta_rule.chunk_fwd import chunk_gated_delta_rule_fwd_intra
        from fla.ops.gated_delta_rule.wy_fast import prepare_wy_repr_bwd, recompute_w_u_fwd
        from fla.ops.utils import chunk_local_cumsum
        from fla.ops.utils.constant import RCP_LN2
        why = fla_signature_problem((
            (chunk_local_cumsum, {"chunk_size", "scale", "reverse"}),
            (chunk_gated_delta_rule_fwd_intra, {"k", "v", "g", "beta", "chunk_size"}),
            (chunk_gated_delta_rule_fwd_h, {"k", "w", "u", "g", "initial_state", "output_final_state", "chunk_size"}),
            (chunk_fwd_o, {"q", "k", "v", "h", "g", "scale", "chunk_size"}),
            (recompute_w_u_fwd, {"k", "v", "beta", "A", "g"}),
            (chunk_bwd_dv_local, {"q", "k", "g", "do", "scale", "chunk_size"}),
            (chunk_gated_delta_rule_bwd_dhu, {"q", "k", "w", "g", "h0", "dht", "do", "dv", "scale", "chunk_size"}),
            (chunk_bwd_dqkwg, {"q", "k", "v", "w", "g", "h", "dv", "do", "dh", "scale", "chunk_size"}),
            (prepare_wy_repr_bwd, {"k", "v", "beta", "g", "A", "dw", "du"})))
        if why:
            return why
        ours = build_state_kernels()
        wy = build_wy_kernel()
        dq_kernel = build_dqkwg_kernel()
        fo_kernel = build_fwd_o_kernel()
    except Exception as e:  # another fla-core version, or none
        return f"{type(e).__name__}: {e}"
    C = 64  # FLA's chunk size, which h is saved at

    @torch.library.custom_op("gdn_repro::chunk_gdr_fwd_state", mutates_args=())
    def fwd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
            scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        q, k, v, g, beta = (t.contiguous() for t in (q, k, v, g, beta))
        g_cum = chunk_local_cumsum(g, chunk_size=C, scale=RCP_LN2)  # FLA's chunk_gated_delta_rule_fwd, step by step
        w, u, A = chunk_gated_delta_rule_fwd_intra(k=k, v=v, g=g_cum, beta=beta, chunk_size=C)
        if GDN_STATE_CHAIN == "1":
            h, v_new = ours["fwd_h"](k, w, u, g_cum, segment=GDN_CHAIN_SEGMENT)
        else:
            h, v_new, _ = chunk_gated_delta_rule_fwd_h(k=k, w=w, u=u, g=g_cum, initial_state=None,
                                                       output_final_state=False, chunk_size=C)
        if GDN_FWD_O:  # FLA's chunk_fwd_o as our kernel (q k^T once a chunk, not once a value tile)
            o = fo_kernel["fwd_o"](q, k, v_new, h, g_cum, scale)
        else:
            o = chunk_fwd_o(q=q, k=k, v=v_new, h=h, g=g_cum, scale=scale, chunk_size=C)
        return o.to(q.dtype), A, g_cum, h, w, v_new

    @fwd.register_fake
    def _(q, k, v, g, beta, scale):
        B, T, H, K = k.shape
        return (v.new_empty(B, T, H, v.size(-1), dtype=q.dtype), k.new_empty(B, T, H, C),
                g.new_empty(B, T, H, dtype=torch.float32), k.new_empty(B, -(-T // C), H, K, v.size(-1)),
                k.new_empty(B, T, H, K), v.new_empty(B, T, H, v.size(-1)))

    @torch.library.custom_op("gdn_repro::chunk_gdr_bwd_state", mutates_args=())
    def bwd(q: Tensor, k: Tensor, v: Tensor, g_cum: Tensor, beta: Tensor, A: Tensor, h: Tensor, w: Tensor | None,
            v_new: Tensor | None, do: Tensor, scale: float,
            chain: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        q, k, v, beta, do = (t.contiguous() for t in (q, k, v, beta, do))
        if w is None or v_new is None:  # GDN_SAVE_WV=0: recompute them
            w, u = recompute_w_u_fwd(k=k, v=v, beta=beta, A=A, g=g_cum)
            v_new = ours["v_new"](u, w, h)  # instead of FLA's second pass of the state recurrence
        dv = chunk_bwd_dv_local(q=q, k=k, g=g_cum, do=do, scale=scale, chunk_size=C)
        if chain:  # GDN_STATE_CHAIN 1 or bwd when the forward ran
            dh, dv = ours["bwd_dhu"](q, k, w, g_cum, do, dv, scale, segment=GDN_CHAIN_SEGMENT)
        else:
            dh, _, dv = chunk_gated_delta_rule_bwd_dhu(q=q, k=k, w=w, g=g_cum, h0=None, dht=None, do=do, dv=dv,
                                                       scale=scale, chunk_size=C)
        if GDN_DQKWG:  # FLA's chunk_bwd_dqkwg (TileLang's on Hopper with Triton 3.4-3.7.0) as our Triton kernel
            dq, dk, dw, dg = dq_kernel["dqkwg"](q, k, v_new, g_cum, h, do, dh, dv, scale)
        else:
            dq, dk, dw, dg = chunk_bwd_dqkwg(q=q, k=k, v=v_new, w=w, g=g_cum, h=h, dv=dv, do=do, dh=dh, scale=scale,
                                             chunk_size=C)
        if GDN_WY_BWD:  # FLA's WY backward, the two adds and the reverse cumsum as one kernel of ours
            dk, dv, db, dg = wy["wy_bwd"](k, v, beta, g_cum, A, dw, dv, dk, dg)
        else:
            dk2, dv, db, dg2 = prepare_wy_repr_bwd(k=k, v=v, beta=beta, g=g_cum, A=A, dw=dw, du=dv)
            dk.add_(dk2)
            dg.add_(dg2)
            dg = chunk_local_cumsum(dg, chunk_size=C, reverse=True)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg.float(), db.to(beta.dtype)

    @bwd.register_fake
    def _(q, k, v, g_cum, beta, A, h, w, v_new, do, scale, chain):
        return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(g_cum),
                torch.empty_like(beta))

    def setup_context(ctx, inputs, output):
        q, k, v, g, beta, scale = inputs
        _, A, g_cum, h, w, v_new = output
        ctx.keep_wv, ctx.chain = GDN_SAVE_WV, GDN_STATE_CHAIN != "0"
        ctx.save_for_backward(q, k, v, g_cum, beta, A, h, *((w, v_new) if ctx.keep_wv else ()))
        ctx.scale = scale

    def backward(ctx, do, dA, dg_cum, dh, dw, dv_new):
        q, k, v, g_cum, beta, A, h, *wv = ctx.saved_tensors
        w, v_new = wv if ctx.keep_wv else (None, None)
        dq, dk, dv, dg, db = bwd(q, k, v, g_cum, beta, A, h, w, v_new, do, ctx.scale, ctx.chain)
        return dq, dk, dv, dg, db, None

    fwd.register_autograd(backward, setup_context=setup_context)
    GDN_STATE_OP = fwd
    return None


GDN_STATE_OP = None  # the state-saving custom op, once registered (GDN_SAVE_STATE auto or 1)
GDN_SAVE_WV = False  # the state op also keeps w and v_new for the backward (GDN_SAVE_WV auto or 1)
GDN_STATE_CHAIN = "0"  # the state op runs our state recurrences: "1" both, "bwd" the backward's (GDN_STATE_CHAIN auto)
GDN_CHAIN_SEGMENT = 0  # their chains in segments of this many chunks (GDN_CHAIN_SEGMENT; 0: one chain per sequence)
GDN_WY_BWD = False  # the state op's WY backward is ours (GDN_WY_BWD auto or 1)
GDN_DQKWG = False  # the state op's dq/dk/dw/dg kernel is ours (GDN_DQKWG auto or 1)
GDN_FWD_O = False  # the state op's output kernel is ours (GDN_FWD_O, v30)
# our kernels inside the state op (one key tile each), keyed by the setting and flag of each, as the GDN log line
# names them
OUR_KERNELS = {"GDN_WY_BWD": "WY backward", "GDN_DQKWG": "dq/dk/dw/dg backward", "GDN_FWD_O": "output"}


CHAIN_SEGMENT_AUTO = (32768, 32)  # GDN_CHAIN_SEGMENT=auto: from this sequence length, segments of this many chunks


def state_chain_choice(chain: str, segment: int | str, dk: int, dv: int, seq_len: int) -> tuple[str, int, str]:
    """GDN_STATE_CHAIN and GDN_CHAIN_SEGMENT resolved for a run with the state-saving op. Segments: auto -> 32
    chunks at sequences of 32k tokens or more (512 dependent chunk steps a chain; on an H200: fwd_h 0.79x and
    bwd_dhu 0.77x of one chain there, but slower at 8k), else one chain (0); N as set. Chains: auto -> 0 (FLA's)
    beyond the head dims ours was timed at (dk <= 64, dv <= 128; the defaults' 42 / 84 padded); else 1 (both of
    ours) where sequences are that long and cut in segments (v27: steps 0.987x of v25 at 32k), else bwd (our
    backward's, FLA's forward: v25, 0.984x / 0.993x / 1.003x at 32k / 16k / 8k); 0 / 1 / bwd as set.
    Returns (chain, segment, why auto chose FLA's or "")."""
    if chain == "0" or (chain == "auto" and (dk > 64 or dv > 128)):
        why = "" if chain == "0" else f"head dims dk={dk} dv={dv}, beyond the tiles ours was timed at, 64 / 128"
        return "0", 0, why
    long_chains = seq_len >= CHAIN_SEGMENT_AUTO[0]
    if segment == "auto":
        segment = CHAIN_SEGMENT_AUTO[1] if long_chains else 0
    if chain == "auto":
        chain = "1" if long_chains and segment else "bwd"
    return chain, segment, ""


def fla_recurrence_programs(args: Hyperparameters) -> int:
    """Programs of each of FLA's state recurrences per micro-step and GPU at its BV=32 tiles: sequences (world_size
    x grad_accum = 8 micro-batches per step) x GDN heads x value tiles."""
    heads, _, dv = gdn_dims(args)
    return max(1, args.train_batch_tokens // (8 * args.train_seq_len)) * heads * -(-dv // 32)


def widen_recurrence_tiles() -> str | None:
    """v21: FLA autotunes its two state recurrences (fwd_h, bwd_dhu) over value tiles BV in {32, 64}: one program
    per (sequence, head, BV value columns), each a chain over all T/64 chunks, so at 32k (2 x 32768 tokens per
    micro-step) only 48 programs run on 132 SMs. BV = 16 configs in the search give twice the programs and a
    shorter step per chunk: 0.89x / 0.86x per call there on an H200 (tools/gpu/bench_recurrence_tiles.py). At
    16k (72 programs) the autotuner's pick was slower in the step, so prepare_mixers adds them only below 64.
    The value columns are independent: same numbers."""
    try:
        import triton
        from fla.ops.common import chunk_delta_h as cdh
        for kern in (cdh.chunk_gated_delta_rule_fwd_kernel_h_blockdim64,
                     cdh.chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64):
            while not hasattr(kern, "configs"):  # the Autotuner under @triton.heuristics
                kern = kern.fn
            if not any(c.kwargs.get("BV") == 16 for c in kern.configs):
                kern.configs.extend(triton.Config({"BV": 16}, num_warps=w, num_stages=s) for w in (2, 4)
                                    for s in (2, 3, 4))
                kern.cache.clear()  # a pick made before (another caller) is made again among all of them
    except Exception as e:  # another fla-core version
        return f"{type(e).__name__}: {e}"
    return None


def gated_delta_rule_fla(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float) -> Tensor:
    """FLA's chunked kernels; q and k already L2-normalised, g (log decay) fp32, beta in (0, 2)."""
    if GDN_OP is not None:
        return GDN_OP(q, k, v, g, beta.to(q.dtype), scale)[0]
    return fla_gated_delta_rule_public(q, k, v, g, beta.to(q.dtype), scale)


def build_conv_kernels():
    """Our Triton kernels for the depthwise causal conv + SiLU of x (B, T, D) with weight (D, K), fp32 inside:
    (fwd, bwd) launchers; x and dy may be strided views (last dim contiguous), as the q, k and v slices of the fused
    projection are. The backward recomputes the conv instead of saving it: one kernel writes dz = dy silu'(z) in
    x's dtype (as a bf16 conv backward takes it) and the weight gradient as fp32 partial sums, one per program
    (TSEG rows of a sequence), summed in a fixed order (deterministic); a second sums K shifted rows of dz into dx
    (the designs tried before, and their times: PERF_NOTES v4, v8, v11)."""
    import triton
    import triton.language as tl

    @triton.jit
    def conv_silu_fwd_kernel(x, w, y, T, D, sxb, sxt, syb, syt, K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
        i_t, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
        t = i_t * BT + tl.arange(0, BT)
        d = i_d * BD + tl.arange(0, BD)
        md = d < D
        z = tl.zeros([BT, BD], dtype=tl.float32)
        for j in tl.static_range(K):  # z_t = sum_j w_j x_{t-K+1+j}, zero before the sequence start
            s = t - (K - 1) + j
            m = ((s >= 0) & (s < T))[:, None] & md[None, :]
            xs = tl.load(x + i_b * sxb + s[:, None] * sxt + d[None, :], mask=m, other=0.0).to(tl.float32)
            z += xs * tl.load(w + d * K + j, mask=md, other=0.0).to(tl.float32)[None, :]
        out = z * tl.sigmoid(z)
        tl.store(y + i_b * syb + t[:, None] * syt + d[None, :], out.to(y.dtype.element_ty),
                 mask=(t < T)[:, None] & md[None, :])

    @triton.jit
    def conv_silu_bwd_dz_kernel(x, w, dy, dz, dw, T, D, sxb, sxt, sdb, sdt, K: tl.constexpr, KP: tl.constexpr,
                                TSEG: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
        # One program per (column block, TSEG rows, sequence), walking its rows in BT-row tiles. The K shifted x
        # rows of a tile are loaded once, as one (BT, KP, BD) tile, for both z and the weight gradient, whose
        # products accumulate elementwise over the walk and are summed over rows once at its end.
        i_d, i_s, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
        d = i_d * BD + tl.arange(0, BD)
        j = tl.arange(0, KP)  # taps, padded to a power of two (taps >= K load nothing and weigh 0)
        md = d < D
        mk = (j < K)[:, None] & md[None, :]
        wt = tl.load(w + d[None, :] * K + j[:, None], mask=mk, other=0.0).to(tl.float32)  # (KP, BD)
        acc = tl.zeros([BT, KP, BD], dtype=tl.float32)
        for it in range(TSEG // BT):
            t = i_s * TSEG + it * BT + tl.arange(0, BT)
            s = t[:, None] - (K - 1) + j[None, :]  # (BT, KP): source row of each tap
            m = ((s >= 0) & (t[:, None] < T) & (j < K)[None, :])[:, :, None] & md[None, None, :]
            xs = tl.load(x + i_b * sxb + s[:, :, None] * sxt + d[None, None, :], mask=m, other=0.0)
            xs = xs.to(tl.float32)
            z = tl.sum(xs * wt[None, :, :], axis=1)  # z_t = sum_j w_j x_{t-K+1+j}
            mt = (t < T)[:, None] & md[None, :]
            g = tl.load(dy + i_b * sdb + t[:, None] * sdt + d[None, :], mask=mt, other=0.0).to(tl.float32)
            sg = tl.sigmoid(z)
            dzt = g * sg * (1.0 + z * (1.0 - sg))  # dz = dy silu'(z)
            tl.store(dz + i_b * T * D + t[:, None] * D + d[None, :], dzt.to(dz.dtype.element_ty), mask=mt)
            acc += dzt[:, None, :] * xs  # dw_j += dz_t x_{t-K+1+j} (fp32 dz)
        part = dw + (i_b * tl.num_programs(1) + i_s) * D * K
        tl.store(part + d[None, :] * K + j[:, None], tl.sum(acc, axis=0), mask=mk)

    @triton.jit
    def conv_silu_bwd_dx_kernel(dz, w, dx, T, D, K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
        i_t, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
        t = i_t * BT + tl.arange(0, BT)
        d = i_d * BD + tl.arange(0, BD)
        md = d < D
        acc = tl.zeros([BT, BD], dtype=tl.float32)
        for i in tl.static_range(K):  # dx_t = sum_i w_{K-1-i} dz_{t+i}
            r = t + i
            g = tl.load(dz + i_b * T * D + r[:, None] * D + d[None, :], mask=(r < T)[:, None] & md[None, :],
                        other=0.0).to(tl.float32)
            acc += g * tl.load(w + d * K + (K - 1 - i), mask=md, other=0.0).to(tl.float32)[None, :]
        tl.store(dx + i_b * T * D + t[:, None] * D + d[None, :], acc.to(dx.dtype.element_ty),
                 mask=(t < T)[:, None] & md[None, :])

    # On the GPU, Triton picks the tile and warps by timing (once per width D); the CPU interpreter (tests) runs
    # one fixed tile. Neither changes what a row or column computes.
    # The dz kernel's walk is TSEG rows long (a multiple of its BT): few enough programs to make the weight
    # gradient's partial sums small, enough (D/BD x T/TSEG x B: 576-1056 at the presets) to fill the GPU.
    tuned = os.environ.get("TRITON_INTERPRET") != "1"
    TSEG = 512 if tuned else 32
    if tuned:
        # (ptxas, sm_90: no spills with 8 warps, nor in any dz config; PERF_NOTES v14 for what each adds)
        configs = [triton.Config({"BT": bt, "BD": bd}, num_warps=nw)
                   for bt, bd in ((32, 64), (32, 128), (64, 64), (64, 128), (128, 64)) for nw in (4, 8)]
        conv_silu_fwd_kernel = triton.autotune(configs, key=["D", "K"])(conv_silu_fwd_kernel)
        conv_silu_bwd_dx_kernel = triton.autotune(configs, key=["D", "K"])(conv_silu_bwd_dx_kernel)
        dz_shapes = [(bt, bd, nw) for bt in (16, 32) for bd in (32, 64, 128) for nw in (4, 8)]
        dz_shapes += [(8, 64, 4), (8, 128, 4), (16, 32, 2), (32, 32, 2), (16, 64, 2), (64, 32, 8), (8, 256, 8)]
        dz_configs = [triton.Config({"BT": bt, "BD": bd}, num_warps=nw) for bt, bd, nw in dz_shapes]
        conv_silu_bwd_dz_kernel = triton.autotune(dz_configs, key=["D", "K"])(conv_silu_bwd_dz_kernel)
    tile, dz_tile = ({}, {}) if tuned else ({"BT": 64, "BD": 64}, {"BT": 16, "BD": 64})

    def fwd(x: Tensor, weight: Tensor) -> Tensor:
        x = x if x.stride(-1) == 1 else x.contiguous()
        (B, T, D), K = x.shape, weight.size(1)
        y = x.new_empty(B, T, D)
        conv_silu_fwd_kernel[lambda meta: (triton.cdiv(T, meta["BT"]), triton.cdiv(D, meta["BD"]), B)](
            x, weight.contiguous(), y, T, D, x.stride(0), x.stride(1), y.stride(0), y.stride(1), K=K, **tile)
        return y

    def bwd(x: Tensor, weight: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
        x = x if x.stride(-1) == 1 else x.contiguous()
        dy = dy if dy.stride(-1) == 1 else dy.contiguous()
        (B, T, D), K = x.shape, weight.size(1)
        weight = weight.contiguous()
        dz, dx = x.new_empty(B, T, D), x.new_empty(B, T, D)
        parts = torch.empty(B * triton.cdiv(T, TSEG), D, K, device=x.device, dtype=torch.float32)
        conv_silu_bwd_dz_kernel[lambda meta: (triton.cdiv(D, meta["BD"]), triton.cdiv(T, TSEG), B)](
            x, weight, dy, dz, parts, T, D, x.stride(0), x.stride(1), dy.stride(0), dy.stride(1), K=K,
            KP=triton.next_power_of_2(K), TSEG=TSEG, **dz_tile)
        conv_silu_bwd_dx_kernel[lambda meta: (triton.cdiv(T, meta["BT"]), triton.cdiv(D, meta["BD"]), B)](
            dz, weight, dx, T, D, K=K, **tile)
        return dx, parts.sum(0).to(weight.dtype)

    return fwd, bwd


def register_conv_op() -> str | None:
    """Register our Triton conv + SiLU (build_conv_kernels) as a torch custom op, so that the graph stays
    whole. Returns None when done, else why not (then the PyTorch form below runs, fused by torch.compile)."""
    global CONV_OP
    if CONV_OP is not None:
        return None
    try:
        conv_fwd, conv_bwd = build_conv_kernels()
    except Exception as e:  # no Triton
        return f"{type(e).__name__}: {e}"

    # Inductor pads the fused projection's rows (2032 -> 2048 elements on CUDA) and, by default, copies each strided
    # slice into the layout eager saw before calling a custom op: six copies per layer and micro-step (~8 ms per 8k
    # step, PERF_NOTES v15). Our kernels take any row stride, so the ops accept any layout.
    tags = (torch.Tag.flexible_layout,) if hasattr(torch.Tag, "flexible_layout") else ()

    @torch.library.custom_op("gdn_repro::conv_silu_fwd", mutates_args=(), tags=tags)
    def fwd(x: Tensor, weight: Tensor) -> Tensor:
        return conv_fwd(x, weight)

    @fwd.register_fake
    def _(x, weight):
        return x.new_empty(x.shape)

    @torch.library.custom_op("gdn_repro::conv_silu_bwd", mutates_args=(), tags=tags)
    def bwd(x: Tensor, weight: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
        return conv_bwd(x, weight, dy)

    @bwd.register_fake
    def _(x, weight, dy):
        return x.new_empty(x.shape), torch.empty_like(weight)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, dy):
        return bwd(*ctx.saved_tensors, dy)

    fwd.register_autograd(backward, setup_context=setup_context)
    CONV_OP = fwd
    return None


CONV_OP = None  # our Triton conv + SiLU as a custom op, once registered


def conv1d_silu(x: Tensor, weight: Tensor, impl: str) -> Tensor:
    """Depthwise causal conv + SiLU of x (B, T, C) with weight (C, K) rounded to x's dtype (as a bf16 conv):
    our Triton kernels (fp32 inside) when registered and the layer runs FLA, else the PyTorch form."""
    if impl == "fla" and CONV_OP is not None:
        return CONV_OP(x, weight.to(x.dtype))
    return causal_conv1d_silu(x, weight)


def causal_conv1d_silu(x: Tensor, weight: Tensor) -> Tensor:
    """SiLU of a depthwise causal convolution over time, x (B, T, C), weight (C, K): a sum of K shifted copies
    of x in (at least) fp32, weights rounded to x's dtype as in a bf16 conv. The CPU path and the fallback: on a
    GPU its compiled backward makes several fp32 passes and is slower than the Triton kernels (PERF_NOTES, v2)."""
    K, T = weight.size(1), x.size(1)
    acc = torch.promote_types(x.dtype, torch.float32)
    xp = F.pad(x, (0, 0, K - 1, 0)).to(acc)
    w = weight.to(x.dtype).to(acc)
    y = xp[:, :T] * w[:, 0]
    for j in range(1, K):
        y = y + xp[:, j:j + T] * w[:, j]
    return F.silu(y).to(x.dtype)


class GatedDeltaNet(nn.Module):
    """GDN mixer: q/k/v projections, each through a causal depthwise conv + SiLU; per-head decay
    g = -exp(A_log) softplus(a + dt_bias) and strength beta = 2 sigmoid(b) ('negative eigenvalues');
    the gated delta rule; per-head RMSNorm of the output times SiLU(gate); zero-initialised out projection."""

    def __init__(self, args: Hyperparameters, impl: str):
        super().__init__()
        dim = args.model_dim
        self.impl = impl
        self.heads, self.dk, self.dv = gdn_dims(args)
        kd, vd, K = self.heads * self.dk, self.heads * self.dv, args.gdn_conv_size
        self.q_proj, self.k_proj = CastedLinear(dim, kd), CastedLinear(dim, kd)
        self.v_proj, self.gate_proj = CastedLinear(dim, vd), CastedLinear(dim, vd)
        self.a_proj, self.b_proj = CastedLinear(dim, self.heads), CastedLinear(dim, self.heads)
        self.o_proj = CastedLinear(vd, dim, zero_init=True)
        bound = 1.0 / math.sqrt(K)  # nn.Conv1d's default init for a depthwise kernel (fan_in = K)
        self.q_conv = nn.Parameter(torch.empty(kd, K).uniform_(-bound, bound))
        self.k_conv = nn.Parameter(torch.empty(kd, K).uniform_(-bound, bound))
        self.v_conv = nn.Parameter(torch.empty(vd, K).uniform_(-bound, bound))
        self.A_log = nn.Parameter(torch.empty(self.heads).uniform_(1, 16).log())
        dt = torch.exp(torch.empty(self.heads).uniform_(math.log(0.001), math.log(0.1))).clamp_min(1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus of dt
        self.o_norm_weight = nn.Parameter(torch.ones(self.dv))

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        H, dk, dv = self.heads, self.dk, self.dv
        # One matmul for q|k|v|gate|a|b; parameters stay separate (Muon: per matrix). One conv per piece: each
        # output is contiguous (FLA copies strided inputs) and each gradient comes separately (no cat).
        w_ab = torch.cat((self.a_proj.weight, self.b_proj.weight))
        q, k, v, gate, ab = SplitLinear.apply(x, self.q_proj.weight, self.k_proj.weight, self.v_proj.weight,
                                              self.gate_proj.weight, w_ab)
        a, b = ab.split((H, H), dim=-1)
        q, k, v = (conv1d_silu(t, w, self.impl) for t, w in ((q, self.q_conv), (k, self.k_conv), (v, self.v_conv)))
        q, k = l2_normalize(q.reshape(B, T, H, dk)), l2_normalize(k.reshape(B, T, H, dk))
        v = v.reshape(B, T, H, dv)
        beta = 2.0 * torch.sigmoid(b.float())
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())
        rule = gated_delta_rule_fla if self.impl == "fla" else gated_delta_rule_chunked
        o = rule(q, k, v, g, beta, dk ** -0.5)
        o = rms_norm(o) * self.o_norm_weight.to(o.dtype)
        o = o * F.silu(gate).reshape(B, T, H, dv)
        return self.o_proj(o.reshape(B, T, H * dv))


def make_mixer(layer: int, args: Hyperparameters) -> nn.Module:
    if layer in parse_gdn_layers(args.gdn_layers_raw, args.num_layers):
        return GatedDeltaNet(args, impl="fla" if args.gdn_impl == "fla" else "torch")
    return CausalSelfAttention(args.model_dim, args.num_heads, args.num_kv_heads, args.rope_base, args.qk_gain_init)


def triton_breaks_hopper_gdn(device: torch.device) -> str | None:
    """FLA issue 640: on Hopper with Triton >= 3.4 and < 3.7.1 the Triton backward of gated chunks gives wrong
    gradients for beta and g. Returns the reason when this host is affected."""
    import triton
    version = tuple(int(p) for p in re.findall(r"\d+", triton.__version__)[:3])
    if torch.cuda.get_device_capability(device)[0] == 9 and (3, 4, 0) <= version < (3, 7, 1):
        return f"Triton {triton.__version__} on {torch.cuda.get_device_name(device)}"
    return None


def import_fla() -> tuple[object, str]:
    """Import fla-core with its autotune picks made at this run's shapes. fla-core (0.6.0) keeps each kernel's pick
    on disk (Triton's cache_results; FLA_CACHE_RESULTS=1 is its default) under a key of head sizes and dtypes but
    not the sequence length or batch, so a run would reuse the picks of whatever shape ran first on the machine
    (another preset, or a benchmark's small check shape). Unless FLA_CACHE_RESULTS is set, we set it to 0: each run
    tunes at its first (warm-up) step, as on a fresh machine. No effect if fla was imported before. Returns (fla,
    a note for the log)."""
    os.environ.setdefault("FLA_CACHE_RESULTS", "0")
    import fla
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # noqa: F401
    try:
        from fla.utils import autotune_cache_kwargs  # what fla-core 0.6.0 gives its kernels' autotuners
    except ImportError:  # another fla-core version
        return fla, "FLA autotune cache unknown (no fla.utils.autotune_cache_kwargs)"
    return fla, ("FLA autotune picks from Triton's disk cache (FLA_CACHE_RESULTS=1: maybe another shape's)"
                 if autotune_cache_kwargs.get("cache_results") else "FLA autotuned at this run's shapes")


def prepare_mixers(args: Hyperparameters, device: torch.device) -> list[str]:
    """Check the GDN settings and resolve GDN_IMPL (auto -> fla on CUDA when fla-core imports, else torch);
    refuse FLA where its backward would be wrong (never train on wrong gradients). Returns log lines."""
    global GDN_OP, GDN_SAVE_WV, GDN_STATE_CHAIN, GDN_CHAIN_SEGMENT, GDN_WY_BWD, GDN_DQKWG, GDN_FWD_O
    GDN_SAVE_WV, GDN_STATE_CHAIN, GDN_CHAIN_SEGMENT = False, "0", 0
    GDN_WY_BWD, GDN_DQKWG, GDN_FWD_O = False, False, False
    gdn = parse_gdn_layers(args.gdn_layers_raw, args.num_layers)
    heads, dk, dv = gdn_dims(args)
    want = args.gdn_impl
    note = "our chunked PyTorch gated delta rule (fp32)"
    if want in ("auto", "fla") and gdn:
        fla_error = None
        if device.type != "cuda":
            fla_error = "no CUDA device"
        else:
            try:
                fla, tuning = import_fla()
            except Exception as e:  # ImportError, or a broken install
                fla_error = f"fla-core not importable ({type(e).__name__}: {e})"
        if fla_error is not None and want == "fla":
            raise ConfigError(f"GDN_IMPL=fla: {fla_error}")
        if fla_error is None:
            broken, no_tilelang = triton_breaks_hopper_gdn(device), ""
            note = f"fla-core {fla.__version__} chunk_gated_delta_rule"
            if broken:
                try:
                    import tilelang  # noqa: F401
                    note += f" (TileLang backward: {broken} is in the broken range)"
                except Exception:
                    # our dq/dk/dw/dg kernel (GDN_DQKWG) replaces the one kernel FLA sends to TileLang; where it is
                    # off, the run is refused below (never FLA's own Triton backward on this host)
                    no_tilelang = (f"GDN_IMPL={want}: {broken} gives wrong GDN gradients in FLA's Triton backward "
                                   "(FLA issue 640) and TileLang is not installed; install tilelang (see README) or "
                                   "set GDN_IMPL=torch")
                    note += (f" ({broken} is in the broken range; TileLang not installed, not needed with our "
                             f"dq/dk/dw/dg kernel)")
            want = "fla"
            why = register_fla_gdn_op()
            note += " as one torch custom op (whole-model compile graph)" if why is None else \
                f" (public op, graph breaks: custom op not registered: {why})"
            if args.gdn_save_state != "0":  # auto: on where it registers (v12: 0.93x/0.96x steps at 8k/32k)
                why = register_fla_gdn_state_op()
                if why is None:  # GDN_SAVE_WV auto: on with the state op (v18: 0.96x at 16k)
                    GDN_OP, GDN_SAVE_WV = GDN_STATE_OP, args.gdn_save_wv != "0"
                    note += f"; chunk states saved for the backward (GDN_SAVE_STATE={args.gdn_save_state})"
                    note += f"; w and v_new saved too (GDN_SAVE_WV={args.gdn_save_wv})" if GDN_SAVE_WV else ""
                    GDN_STATE_CHAIN, GDN_CHAIN_SEGMENT, fla_why = state_chain_choice(
                        args.gdn_state_chain, args.gdn_chain_segment, dk, dv, args.train_seq_len)
                    note += {"0": f"; state recurrences: FLA's (GDN_STATE_CHAIN=auto: {fla_why})" if fla_why else "",
                             "1": "; state recurrences: our chain kernels (GDN_STATE_CHAIN=1)",
                             "bwd": "; backward state recurrence: our chain kernels (GDN_STATE_CHAIN=bwd)"
                             }[GDN_STATE_CHAIN]  # the settings as resolved (auto's choice), read by the bench tools
                    if GDN_CHAIN_SEGMENT:
                        note += f", in segments of {GDN_CHAIN_SEGMENT} chunks (GDN_CHAIN_SEGMENT)"
                    # auto: ours where they apply (one key tile each); v29: WY + dq/dk/dw/dg steps 0.984x at 32k,
                    # v30: the output kernel 0.990x more (PERF_NOTES)
                    on = {s: getattr(args, s.lower()) != "0" and dk <= 64 for s in OUR_KERNELS}
                    GDN_WY_BWD, GDN_DQKWG, GDN_FWD_O = on.values()
                    note += "".join(f"; {what}: our kernel ({s}={getattr(args, s.lower())})"
                                    for s, what in OUR_KERNELS.items() if on[s])
                elif args.gdn_save_state == "1":
                    raise ConfigError(f"GDN_SAVE_STATE=1: FLA's kernels could not be registered as the state-saving "
                                      f"op ({why}); use GDN_SAVE_STATE=0 or auto")
                else:
                    note += f"; chunk states recomputed in the backward (state-saving op not registered: {why})"
            if no_tilelang and not GDN_DQKWG:  # FLA's own Triton dqkwg would run: wrong gradients on this host
                off = ("GDN_DQKWG=0" if args.gdn_dqkwg == "0" else f"key head dim {dk} > 64" if dk > 64 else
                       "GDN_SAVE_STATE=0" if args.gdn_save_state == "0" else
                       "it needs the state-saving op, not registered here")
                raise ConfigError(f"{no_tilelang} (our dq/dk/dw/dg kernel, which replaces TileLang's, is off: {off})")
            programs = fla_recurrence_programs(args)
            # v21: 48 at the 32k preset, where BV=16 ran 0.988x; 72 at 16k, where it ran 1.025x (not with v22's chain)
            if programs < 64 and GDN_STATE_CHAIN != "1":
                why = widen_recurrence_tiles()
                note += f"; state recurrences autotuned with BV=16 tiles too ({programs} programs)" if why is None \
                    else f"; state recurrences: FLA's tiles (BV=16 not added: {why})"
            why = register_conv_op()
            note += "; conv: triton conv1d+silu kernels as a torch custom op" if why is None else \
                f"; conv: PyTorch (triton conv kernels not registered: {why})"
            note += f"; {tuning}"
        else:
            note += f" (fla unavailable: {fla_error})"
            want = "torch"
    if args.gdn_save_wv == "1" and not GDN_SAVE_WV:
        raise ConfigError(f"GDN_SAVE_WV=1: needs the state-saving op (GDN_SAVE_STATE auto or 1 with FLA's kernels), "
                          f"but this run has GDN_IMPL={args.gdn_impl}, GDN_SAVE_STATE={args.gdn_save_state}"
                          f"{', no GDN layers' if not gdn else ''}; use GDN_SAVE_WV=0 or auto")
    if args.gdn_state_chain in ("1", "bwd") and GDN_STATE_CHAIN == "0":
        raise ConfigError(f"GDN_STATE_CHAIN={args.gdn_state_chain}: needs the state-saving op (GDN_SAVE_STATE auto "
                          f"or 1 with FLA's kernels), but this run has GDN_IMPL={args.gdn_impl}, "
                          f"GDN_SAVE_STATE={args.gdn_save_state}{', no GDN layers' if not gdn else ''}; "
                          f"use GDN_STATE_CHAIN=0")
    if args.gdn_chain_segment not in ("auto", 0) and GDN_STATE_CHAIN == "0":
        raise ConfigError(f"GDN_CHAIN_SEGMENT={args.gdn_chain_segment}: cuts our state recurrences' chains, but this "
                          f"run has none (GDN_STATE_CHAIN={args.gdn_state_chain} resolved to {GDN_STATE_CHAIN}, "
                          f"GDN_IMPL={args.gdn_impl}, GDN_SAVE_STATE={args.gdn_save_state}); "
                          f"use GDN_CHAIN_SEGMENT=auto or 0")
    for s, on in zip(OUR_KERNELS, (GDN_WY_BWD, GDN_DQKWG, GDN_FWD_O)):
        if getattr(args, s.lower()) == "1" and not on:
            raise ConfigError(f"{s}=1: needs the state-saving op (GDN_SAVE_STATE auto or 1 with FLA's kernels) "
                              f"and GDN key head dims <= 64, but this run has GDN_IMPL={args.gdn_impl}, "
                              f"GDN_SAVE_STATE={args.gdn_save_state}, key head dim {dk}"
                              f"{', no GDN layers' if not gdn else ''}; use {s}=0")
    if args.gdn_save_state == "1" and want != "fla":
        raise ConfigError(f"GDN_SAVE_STATE=1: applies to FLA's kernels (GDN_IMPL=fla on CUDA with fla-core), but "
                          f"this run's GDN path is our PyTorch form (GDN_IMPL={args.gdn_impl}"
                          f"{', no GDN layers' if not gdn else ''}); use GDN_SAVE_STATE=0 or auto")
    args.gdn_impl = "fla" if want == "fla" else "torch"
    attn = [i for i in range(args.num_layers) if i not in gdn]
    return [f"gdn_layers:{gdn} attn_layers:{attn}",
            f"gdn_n_heads:{heads} gdn_expand_v:{args.gdn_expand_v} gdn_conv_size:{args.gdn_conv_size} "
            f"gdn_head_dim_ratio:{args.gdn_head_dim_ratio} gdn_head_dims:{dk}x{dv}",
            f"gdn_impl:{args.gdn_impl} GDN core: {note}",
            f"attention_mode:gqa num_heads:{args.num_heads} num_kv_heads:{args.num_kv_heads}"]


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
