"""tools/inductor_code.py: the launch lines of inductor's output code that the GPU probes print and count."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO))
from tools.inductor_code import launch_name, launches  # noqa: E402

CODE = '''
aten = torch.ops.aten
def call(args):
    # %clone : Tensor "f32[2, 8]" = call_function[target=torch.ops.aten.clone.default](args = (%mul_3,))
    triton_poi_fused_clone_transpose_8.run(buf16, buf21, 1048576, stream=stream0)
    extern_kernels.mm(reinterpret_tensor(buf21, (2048, 512), (512, 1), 0), buf20, out=buf22)
    buf15 = torch.ops.aten._scaled_dot_product_cudnn_attention.default(buf14, buf13, buf7, None, True)
    assert_size_stride(buf16, (2, 8, 1024, 64), (524288, 65536, 64, 1), 'torch.ops.aten.x.default')
    buf30 = torch.ops.gdn_repro.conv_silu_fwd.default(buf29, primals_4)
    buf31 = buf32[0 : (1536) * (512)].view(1536, 512).sum(dim=0).view([512])
    del buf16
'''


def test_launch_lines_and_names():
    got = launches(CODE)
    assert [launch_name(s) for s in got] == [
        "triton_poi_fused_clone_transpose", "extern_kernels.mm",
        "torch.ops.aten._scaled_dot_product_cudnn_attention.default", "torch.ops.gdn_repro.conv_silu_fwd.default",
        "wrapper.sum"]
    assert all(not s.startswith(("#", "assert_")) for s in got)  # comments and asserts name ops too: left out
