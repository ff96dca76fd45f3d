"""Reading inductor's generated output code (what `torch._inductor.utils.run_and_get_code` returns): the lines that
launch work, and a short name for each, shared by the GPU probes in tools/gpu/."""

from __future__ import annotations

import re


def launches(code: str) -> list[str]:
    """The stripped lines of `code` that launch work: Triton kernels (`name.run(...)`), extern kernels and torch ops
    called with arguments. Left out: the FX graph's comment lines (they name aten ops too) and aliases such as
    `aten = torch.ops.aten`."""
    out = []
    for line in code.splitlines():
        s = line.strip()
        if s.startswith("#") or "(" not in s or s.startswith(("assert_", "def ", "class ")):
            continue
        if (s.startswith("triton_") and ".run(" in s) or s.startswith("extern_kernels.") or "torch.ops." in s:
            out.append(s)
    return out


def launch_name(line: str) -> str:
    """A launch line's kernel or op: a Triton kernel without its per-graph number, else the called name."""
    if line.startswith("triton_"):
        return re.sub(r"_\d+$", "", line.split(".run(")[0])
    call = line.split("(")[0]
    return call.split("=")[-1].strip()
