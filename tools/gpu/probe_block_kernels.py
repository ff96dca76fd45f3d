"""Which kernels does inductor generate for one of the baseline's blocks (attention + MLP) on CUDA, forward and
backward? Prints each graph's kernel launches and extern calls (graph 0 = forward, 1 = backward), the strides of
the SDPA output and the tensors saved for the backward, for each training script given, so that two versions can
be compared line by line: e.g. whether the attention output is copied before the output projection (PERF_NOTES
v16) and which activations a change keeps out of the saved set.

    python3 tools/gpu/probe_block_kernels.py [SCRIPT.py ...]   # default: train_gpt.py; on a CUDA machine
"""
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.gpu.cuda_model import load_script_file  # noqa: E402
from tools.inductor_code import launch_name, launches  # noqa: E402

scripts = sys.argv[1:] or [str(Path(__file__).resolve().parents[2] / "train_gpt.py")]
for path in scripts:  # arguments first, so that a CPU machine checks them too
    if not Path(path).is_file() or not path.endswith(".py"):
        print(f"probe_block_kernels: SCRIPT {path}: expected an existing training script (.py)", file=sys.stderr)
        sys.exit(2)
if not torch.cuda.is_available():
    sys.exit("probe_block_kernels: needs a CUDA device (inductor's layouts for SDPA differ on the CPU)")
print("torch", torch.__version__, "card", torch.cuda.get_device_name())

for n, path in enumerate(scripts):
    mod = load_script_file(path, f"probe_script_{n}")
    args = mod.Hyperparameters()
    print("==", path, mod.configure_attention(args, torch.device("cuda")))
    torch._dynamo.reset()
    torch.manual_seed(0)
    attn = mod.CausalSelfAttention(args.model_dim, args.num_heads, args.num_kv_heads, args.rope_base,
                                   args.qk_gain_init)
    block = mod.Block(args.model_dim, attn, args.mlp_mult).cuda()
    x = torch.randn(2, 1024, args.model_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    x0 = torch.randn_like(x)
    strides = []
    orig_sdpa = F.scaled_dot_product_attention

    def eager_sdpa(*a, **k):  # the eager run below records SDPA's output strides
        y = orig_sdpa(*a, **k)
        strides.append(tuple(y.stride()))
        return y

    F.scaled_dot_product_attention = eager_sdpa
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            block(x, x0)
    finally:
        F.scaled_dot_product_attention = orig_sdpa
    print("eager sdpa output strides (B, H, T, D):", strides[0])

    saved = {}

    def pack(t):  # what the compiled forward keeps for the backward (distinct storages)
        saved.setdefault(t.untyped_storage().data_ptr(), (str(t.dtype).replace("torch.", ""), tuple(t.shape),
                                                          tuple(t.stride()), t.untyped_storage().nbytes()))
        return t

    def step():
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with torch.autocast("cuda", dtype=torch.bfloat16), hooks:
            y = torch.compile(block)(x, x0)
        y.float().square().sum().backward()

    _, codes = run_and_get_code(step)
    print(f"saved for backward: {sum(v[3] for v in saved.values()) / 2**20:.2f} MiB in {len(saved)} storages")
    for dtype, shape, stride, nbytes in sorted(saved.values(), key=lambda v: -v[3]):
        print(f"  saved {nbytes / 2**20:8.3f} MiB {dtype} {list(shape)} strides {list(stride)}")
    for i, code in enumerate(codes):
        kinds = Counter()
        for s in launches(code):
            print(i, s[:200])
            kinds[launch_name(s)] += 1
        copies = [k for k in kinds if "clone" in k and all(w not in k for w in ("rms", "mul", "add"))]
        print(f"graph {i}: {sum(kinds.values())} launches; pure copy kernels: {copies or 'none'}")
