"""The two numbers for each GDN kernel of the hybrid's training step (issue 5: "count the FLOPs and bytes of each
part first"): per call of FLA's chunked gated delta rule as the state-saving op runs it (GDN_SAVE_STATE and
GDN_SAVE_WV on, the default) and of our conv + SiLU kernels, the fewest bytes it must move (each input read once,
each output written once) and its matmul FLOPs, each over its ceiling; with a torch.profiler kernel table
(tools/profile_script.py) it sets each kernel's measured time per call beside that floor.

    python3 tools/gdn_floors.py [--seq-len 32768] [--batch-tokens 524288] [--profile TABLE --steps 2]

Shapes are the hybrid's defaults (8 heads, dk 42, dv 84, chunks of 64, conv over q|k|v); one call is one GDN layer
and micro-batch (8 micro-batches per step, 7 GDN layers). FLOPs count the real head dims (the kernels pad dk to
64 and dv to 96 or 128) and dense chunk tiles. The two state recurrences (fwd_h, bwd_dhu) are chains of T/64
dependent chunk steps per (sequence, head, value tile): their floor is the chain's latency, not either number.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.profile_summary import kernel_rows  # noqa: E402

BYTES_PER_S = 4.3e12  # device-to-device copy, bytes read + written, measured on the H200 (device KINDS.md)
FLOPS_PER_S = 790e12  # bf16 matrix product, 8192^3, measured there


@dataclass(frozen=True)
class Kernel:
    name: str  # the kernel's name in a profile table
    phase: str  # fwd / bwd
    bytes: float  # per call
    flops: float  # per call
    chain: int = 0  # dependent chunk steps per program (the recurrences), else 0

    @property
    def floor_us(self) -> float:
        return 1e6 * max(self.bytes / BYTES_PER_S, self.flops / FLOPS_PER_S)


def gdn_kernels(seqs: int, T: int, H: int = 8, K: int = 42, V: int = 84, C: int = 64) -> list[Kernel]:
    """Each kernel of one GDN layer's forward + backward for `seqs` sequences of T tokens (one micro-batch)."""
    n = seqs * T * H  # token-heads
    nc = seqs * -(-T // C) * H  # chunk-heads
    e, f = 2, 4  # bf16 activations, fp32 gates
    state = nc * K * V * e  # h or dh, bf16, one K x V state per chunk
    qk, vv = n * K * e, n * V * e  # one (T, H, K) or (T, H, V) bf16 tensor
    return [
        Kernel("chunk_local_cumsum_scalar_kernel", "both", 4 * n * f, 0),  # g's chunk-local cumsum, dg's back
        # A = (I + strict_tril(diag(beta) K K^T * decay))^-1 per chunk: read k, beta, g; write A (C per row)
        Kernel("chunk_gated_delta_rule_fwd_kkt_solve_kernel", "fwd", qk + n * e + n * f + n * C * e,
               n * (C * K + 2 * C * C / 3)),
        # w = A (k beta e^g), u = A (v beta): read A, k, v, beta, g; write w, u
        Kernel("recompute_w_u_fwd_kernel", "fwd", n * C * e + qk + vv + n * e + n * f + qk + vv,
               n * 2 * C * (K + V)),
        # the chain: v_new = u - w h, h <- e^g h + k^T v_new; read k, w, u, g; write h per chunk and v_new
        Kernel("chunk_gated_delta_rule_fwd_kernel_h_blockdim64", "fwd", 2 * qk + vv + n * f + state + vv,
               n * 4 * K * V, chain=-(-T // C)),
        # o = e^g q h + (q k^T * decay, causal) v_new: read q, k, v_new, h, g; write o
        Kernel("chunk_fwd_kernel_o", "fwd", 2 * qk + vv + state + n * f + vv, n * 2 * (K * V + C * K + C * V)),
        # dv = (k q^T * decay, causal) do: read q, k, g, do; write dv
        Kernel("chunk_bwd_kernel_dv_local", "bwd", 2 * qk + n * f + 2 * vv, n * 2 * (C * K + C * V)),
        # the chain backwards: dv2 = dv + k dh, dh <- e^g dh + q^T do - w^T dv2; read q, k, w, g, do, dv; write dh, dv2
        Kernel("chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64", "bwd", 3 * qk + n * f + 2 * vv + state + vv,
               n * 6 * K * V, chain=-(-T // C)),
        # TileLang's dq, dk, dw, dg (FLA's Triton one is wrong on Hopper with this Triton): read q, k, v_new, do,
        # dv, h, dh, g; write dq, dk, dw, dg
        Kernel("kernel_kernel", "bwd", 2 * qk + 3 * vv + 2 * state + n * f + 3 * qk + n * f,
               n * 2 * (C * V + 3 * K * V + 2 * C * K)),
        # the WY backward: read k, v, beta, g, A, dw, du; write dk2, dv, dbeta, dg2
        Kernel("prepare_wy_repr_bwd_kernel", "bwd",
               2 * qk + 2 * vv + n * e + n * f + n * C * e + qk + vv + n * e + n * f,
               n * 2 * (2 * C * K + 2 * C * V + 2 * C * C + C * K)),
    ]


def conv_kernels(seqs: int, T: int, H: int = 8, K: int = 42, V: int = 84) -> list[Kernel]:
    """Our depthwise causal conv + SiLU over q, k and v (three launches each per layer and micro-batch; the
    figures are the three together): forward reads x, writes y; the backward's dz kernel reads x and dy, writes
    dz; its dx kernel reads dz, writes dx. Weights and the weight gradient's partial sums are small."""
    rows_bytes = seqs * T * H * (2 * K + V) * 2
    return [Kernel("conv_silu_fwd_kernel", "fwd", 2 * rows_bytes, 0),
            Kernel("conv_silu_bwd_dz_kernel", "bwd", 3 * rows_bytes, 0),
            Kernel("conv_silu_bwd_dx_kernel", "bwd", 2 * rows_bytes, 0)]


def measured_per_call(table: str, steps: int, calls_per_step: int) -> dict[str, tuple[float, float]]:
    """kernel name -> (ms per step, us per layer call) from a profile table of `steps` training steps; a kernel
    launched several times per layer call (the conv's three pieces) is summed over them."""
    out = {}
    for name, ms, _calls in kernel_rows(table):
        out[name] = (ms / steps, 1e3 * ms / (steps * calls_per_step))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=32768)
    p.add_argument("--batch-tokens", type=int, default=0, help="per step (default: the preset, 393216 up to "
                   "16k, 524288 above)")
    p.add_argument("--gdn-layers", type=int, default=7)
    p.add_argument("--profile", help="a torch.profiler kernel table of the hybrid at this length")
    p.add_argument("--steps", type=int, default=0, help="training steps the table recorded (with --profile)")
    a = p.parse_args(argv)
    if a.seq_len < 64 or a.gdn_layers < 1 or a.batch_tokens < 0:
        p.error("--seq-len must be >= 64, --gdn-layers >= 1 and --batch-tokens >= 0 (0: the preset)")
    batch = a.batch_tokens or (393216 if a.seq_len <= 16384 else 524288)
    if batch % (8 * a.seq_len):
        p.error(f"--batch-tokens {batch}: expected a multiple of 8 micro-batches x --seq-len {a.seq_len}")
    seqs = batch // (8 * a.seq_len)
    calls = 8 * a.gdn_layers  # layer calls per step
    measured = {}
    if a.profile:
        if a.steps < 1:
            p.error("--profile needs --steps (the training steps the table recorded)")
        if not Path(a.profile).is_file():
            p.error(f"--profile {a.profile}: no such file")
        try:
            measured = measured_per_call(Path(a.profile).read_text(encoding="utf-8"), a.steps, calls)
        except ValueError as e:
            p.error(f"--profile {a.profile}: {e}")
    print(f"# GDN kernels per layer call: {seqs} x {a.seq_len} tokens, {calls} calls per step; floors at "
          f"{BYTES_PER_S / 1e12:.1f} TB/s and {FLOPS_PER_S / 1e12:.0f} TFLOP/s")
    print(f"{'kernel':50s} {'phase':5s} {'MB':>7s} {'GFLOP':>7s} {'floor_us':>8s} {'meas_us':>8s} {'x_floor':>7s} "
          f"{'ms/step':>8s} {'floor_ms/step':>13s}")
    tot_floor = tot_meas = 0.0
    for k in gdn_kernels(seqs, a.seq_len) + conv_kernels(seqs, a.seq_len):
        floor_ms = k.floor_us * calls / 1e3
        tot_floor += floor_ms
        m = measured.get(k.name)
        meas = f"{m[1]:8.1f} {m[1] / k.floor_us:7.1f} {m[0]:8.1f}" if m else f"{'-':>8s} {'-':>7s} {'-':>8s}"
        tot_meas += m[0] if m else 0.0
        note = f"  chain of {k.chain} steps" + (f": {1e3 * m[1] / k.chain:.2f} ns per step" if m else "") \
            if k.chain else ""
        print(f"{k.name:50s} {k.phase:5s} {k.bytes / 1e6:7.1f} {k.flops / 1e9:7.2f} {k.floor_us:8.1f} {meas} "
              f"{floor_ms:13.1f}{note}")
    print(f"{'total':50s} {'':5s} {'':7s} {'':7s} {'':8s} {'':8s} {'':7s} "
          f"{(f'{tot_meas:8.1f}' if measured else f'{chr(45):>8s}')} {tot_floor:13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
