"""Reading inductor's generated output code (what `torch._inductor.utils.run_and_get_code` returns): the lines that
launch work, and a short name for each, shared by the GPU probes in tools/gpu/."""

from __future__ import annotations

import re


# The wrapper's own tensor-method reductions: a mix-order reduction kernel (a row reduction fused with a column
# one) leaves per-split partial sums that the wrapper reduces with `ws[a:b].view(n, m).sum(dim=0)`: an aten launch.
WRAPPER_REDUCTION = re.compile(r"\.(sum|amin|amax)\(dim=")


def launches(code: str) -> list[str]:
    """The stripped lines of `code` that launch work: Triton kernels (`name.run(...)`), extern kernels, torch ops
    called with arguments and the wrapper's tensor-method reductions. Left out: the FX graph's comment lines (they
    name aten ops too) and aliases such as `aten = torch.ops.aten`."""
    out = []
    for line in code.splitlines():
        s = line.strip()
        if s.startswith("#") or "(" not in s or s.startswith(("assert_", "def ", "class ")):
            continue
        if (s.startswith("triton_") and ".run(" in s) or s.startswith("extern_kernels.") or "torch.ops." in s \
                or WRAPPER_REDUCTION.search(s):
            out.append(s)
    return out


def launch_name(line: str) -> str:
    """A launch line's kernel or op: a Triton kernel without its per-graph number, a wrapper reduction as
    `wrapper.sum` (or amin/amax), else the called name."""
    if line.startswith("triton_"):
        return re.sub(r"_\d+$", "", line.split(".run(")[0])
    m = WRAPPER_REDUCTION.search(line)
    if m and "torch.ops." not in line and not line.startswith("extern_kernels."):
        return f"wrapper.{m.group(1)}"
    call = line.split("(")[0]
    return call.split("=")[-1].strip()
