"""Which kernels does inductor put around the hybrid's conv custom op on CUDA (copies of the padded q/k/v slices of
the fused projection, PERF_NOTES v15)? Compiles one GatedDeltaNet layer at the script's default dims (our Triton conv
kernels as custom ops; a stand-in for FLA's op returning zeros of the right shapes, so no fla-core is needed) under
bf16 autocast, forward and backward, and prints the generated kernel launches and custom-op calls (graph 0 =
forward, 1 = backward): once with the conv ops registered untagged here, once as the script registers them
(tagged flexible_layout).

    python3 tools/gpu/probe_conv_layout.py      # from the repository root, on a CUDA machine
"""
import importlib.util
import sys
from pathlib import Path

import torch
from torch import Tensor
from torch._inductor.utils import run_and_get_code

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.inductor_code import launches  # noqa: E402

if not torch.cuda.is_available():
    sys.exit("probe_conv_layout: needs a CUDA device (inductor pads and copies only there)")
spec = importlib.util.spec_from_file_location("gdn", Path(__file__).resolve().parents[2] / "train_gpt_gdn.py")
gdn = importlib.util.module_from_spec(spec); spec.loader.exec_module(gdn)
print("torch", torch.__version__)
C = 64


def state_outputs(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                  scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The state op's four outputs (o, A, g_cum, h) as zeros: its implementation and its fake at once."""
    B, T, H, K = k.shape
    return (v.new_zeros(B, T, H, v.size(-1), dtype=q.dtype), k.new_zeros(B, T, H, C),
            g.new_zeros(B, T, H, dtype=torch.float32), k.new_zeros(B, -(-T // C), H, K, v.size(-1)))


def state_grads(q: Tensor, k: Tensor, v: Tensor, g_cum: Tensor, beta: Tensor, A: Tensor, h: Tensor, do: Tensor,
                scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(torch.zeros_like(t) for t in (q, k, v, g_cum, beta))


st_fwd = torch.library.custom_op("probe::st_fwd", mutates_args=())(state_outputs)
st_fwd.register_fake(state_outputs)
st_bwd = torch.library.custom_op("probe::st_bwd", mutates_args=())(state_grads)
st_bwd.register_fake(state_grads)


def setup(ctx, inputs, output):
    q, k, v, g, beta, scale = inputs
    ctx.save_for_backward(q, k, v, output[2], beta, output[1], output[3])
    ctx.scale = scale


def bw(ctx, do, dA, dg, dh):
    return (*st_bwd(*ctx.saved_tensors, do, ctx.scale), None)


st_fwd.register_autograd(bw, setup_context=setup)


def untagged_conv_op():
    """Our conv kernels as custom ops without the script's flexible_layout tag (v14 and before)."""
    conv_fwd, conv_bwd = gdn.build_conv_kernels()

    @torch.library.custom_op("probe::conv_plain_fwd", mutates_args=())
    def fwd(x: Tensor, weight: Tensor) -> Tensor:
        return conv_fwd(x, weight)

    @fwd.register_fake
    def _(x, weight):
        return x.new_empty(x.shape)

    @torch.library.custom_op("probe::conv_plain_bwd", mutates_args=())
    def bwd(x: Tensor, weight: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
        return conv_bwd(x, weight, dy)

    @bwd.register_fake
    def _(x, weight, dy):
        return x.new_empty(x.shape), torch.empty_like(weight)

    fwd.register_autograd(lambda ctx, dy: bwd(*ctx.saved_tensors, dy),
                          setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs))
    return fwd


assert gdn.register_conv_op() is None, "the script's conv op did not register"
gdn.GDN_OP = st_fwd
args = gdn.Hyperparameters()
for name, op in (("untagged", untagged_conv_op()), ("as the script registers it", gdn.CONV_OP)):
    torch._dynamo.reset()
    gdn.CONV_OP = op
    layer = gdn.GatedDeltaNet(args, impl="fla").cuda()
    x = torch.randn(2, 1024, args.model_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = torch.compile(layer)(x)
        y.float().sum().backward()
    _, codes = run_and_get_code(step)
    print("== conv op", name, "tags", op._opoverload.tags, "dims", gdn.gdn_dims(args), "model_dim", args.model_dim)
    for i, code in enumerate(codes):
        for s in launches(code):
            print(i, s[:220])
