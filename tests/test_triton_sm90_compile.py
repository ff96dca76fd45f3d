"""The hybrid's Triton conv + SiLU kernels (train_gpt_gdn.py; its state kernels: test_state_chain.py) compile for Hopper
(sm_90) on a machine without a GPU: Triton's compiler and its bundled ptxas from run_tests.sh's TRITON_INTERP_DIR,
ahead of time, in a subprocess. The interpreter tests check what the kernels compute; this one catches what only the
GPU compiler refuses (a dot shape, a layout's lowering), before any device time is spent. Prints each kernel's
registers and spills for the record; speed is not asserted."""

from __future__ import annotations

import textwrap

from test_triton_conv import run_with_triton

# compile_sm90(fn, signature, constexprs): one Triton kernel compiled for sm_90 (build_sm90, pointers aligned as at run
# time) and assembled by the bundled ptxas for sm_90a; returns ptxas' registers / spills line (shared with
# test_state_chain.py).
SM90_HELPER = textwrap.dedent("""
    import importlib.util, os, subprocess, sys, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sys.path.insert(0, sys.argv[-1])
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")

    def build_sm90(fn, sig, const, num_warps=4, num_stages=3, maxnreg=None):
        # pointers 16-byte aligned, as Triton's launcher specialises them for torch's allocations: without it the
        # build vectorises no load and differs from what runs
        attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items() if t.startswith("*")}
        sig = {**sig, **{k: "constexpr" for k in const}}
        return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages,
                                       **({"maxnreg": maxnreg} if maxnreg else {})})

    def compile_sm90(fn, sig, const, num_warps=4, num_stages=3, maxnreg=None):
        k = build_sm90(fn, sig, const, num_warps, num_stages, maxnreg)
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(k.asm["ptx"])
        r = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
        assert r.returncode == 0, (fn.__name__, r.stderr[-2000:])
        return " | ".join(ln.split("info    : ")[-1].strip() for ln in r.stderr.splitlines()
                          if "Used" in ln or "spill" in ln)
""")

COMPILE = SM90_HELPER + textwrap.dedent("""
    spec = importlib.util.spec_from_file_location("gdn", sys.argv[1])
    gdn = importlib.util.module_from_spec(spec); spec.loader.exec_module(gdn)

    def jit_functions(launcher):  # the kernels a launcher closes over (autotuned ones unwrapped)
        jit = triton.runtime.jit.JITFunction
        cells = [c.cell_contents for c in launcher.__closure__ or ()]
        return {f.__name__: f for f in (c if isinstance(c, jit) else getattr(c, "fn", c) for c in cells)
                if isinstance(f, jit)}

    conv_fwd, conv_bwd = gdn.build_conv_kernels()
    kernels = {**jit_functions(conv_fwd), **jit_functions(conv_bwd)}  # the state kernels: test_state_chain.py
    strides = {"sxb": "i32", "sxt": "i32"}
    cases = [
        ("conv_silu_fwd_kernel", {"x": "*bf16", "w": "*bf16", "y": "*bf16", "T": "i32", "D": "i32", **strides,
                                  "syb": "i32", "syt": "i32"}, dict(K=4, BT=64, BD=64)),
        ("conv_silu_bwd_dz_kernel", {"x": "*bf16", "w": "*bf16", "dy": "*bf16", "dz": "*bf16", "dw": "*fp32",
                                     "T": "i32", "D": "i32", **strides, "sdb": "i32", "sdt": "i32"},
         dict(K=4, KP=4, TSEG=512, BT=32, BD=64)),
        ("conv_silu_bwd_dx_kernel", {"dz": "*bf16", "w": "*bf16", "dx": "*bf16", "T": "i32", "D": "i32"},
         dict(K=4, BT=64, BD=64)),
    ]
    for name, sig, const in cases:
        print(f"sm90 {name}: {compile_sm90(kernels[name], sig, const)}")
    print("ok")
""")


def test_kernels_compile_for_hopper():
    r = run_with_triton(COMPILE, interpret=False)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-4000:]
    assert r.stdout.count("sm90 ") == 3
