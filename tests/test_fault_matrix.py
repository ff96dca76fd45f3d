"""tools/gpu/fault_matrix.py: a cell's result read from its process (ok, fault, other error, timeout; under
compute-sanitizer too), every cell in a process of its own with one line each and a summary per config, its
arguments refused by name before any work, and a real cell on the CPU (our output kernel held to one config,
under Triton's interpreter, against FLA's path)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from test_fla_interpreted import INTERP_PATCHES, require_fla
from test_triton_conv import TRITON_DIR, run_with_triton

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tools.gpu.fault_matrix import classify, matrix  # noqa: E402

IMA = "RuntimeError: Triton Error [CUDA]: an illegal memory access was encountered"


def test_classify_reads_each_outcome():
    assert classify(0, "warming up\ncell_ok max_rel_diff:2.1e-03\n") == "ok max_rel_diff:2.1e-03"
    # compute-sanitizer prints its summary after the cell's own line
    assert classify(0, "cell_ok max_rel_diff:1e-07\n========= ERROR SUMMARY: 0 errors\n").startswith("ok ")
    assert classify(1, f"Traceback (most recent call last):\n  ...\n{IMA}\n") == f"fault {IMA}"
    san = "========= Invalid __shared__ read of size 16 bytes\n========= ERROR SUMMARY: 1 error\n"
    assert classify(99, "cell_ok max_rel_diff:1e-07\n" + san) == "fault ========= Invalid __shared__ read of size 16 bytes"
    assert classify(1, "ValueError: config 12: fwd_o has configs 0..11\n") == \
        "error rc=1 ValueError: config 12: fwd_o has configs 0..11"
    assert classify(0, "") == "error rc=0 (no output)"  # exit 0 without the cell's line is not ok
    assert classify(None, "") == "timeout"


def test_matrix_runs_each_cell_in_its_own_process(capsys):
    def cell_cmd(c, B, T):  # config 1 faults at B=2 only, as the v30 kernel might
        body = f"raise RuntimeError({IMA.split(': ', 1)[1]!r})" if (c == 1 and B == 2) else \
            f"print('cell_ok max_rel_diff:{c}e-07 pid', __import__('os').getpid())"
        return [sys.executable, "-c", body]
    res = matrix("fwd_o", [0, 1], [(1, 64), (2, 64)], 2, cell_cmd, 60, ["cfgA", "cfgB"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("fault_cell ")]
    assert len(lines) == 8 and len(res[0]) == len(res[1]) == 4
    assert all(r.startswith("ok max_rel_diff:0e-07") for r in res[0])
    assert [r.split()[0] for r in res[1]] == ["ok", "ok", "fault", "fault"]
    assert "config:cfgB shape:2x64 try:2 " in lines[-1] and "illegal memory access" in lines[-1]
    pids = {r.split("pid ")[1] for r in res[0] + res[1] if r.startswith("ok")}
    assert len(pids) == 6  # every ok cell ran in a process of its own


def test_matrix_keeps_each_cells_whole_output(tmp_path, capsys):
    """--keep: a sanitizer's report is several lines, of which the result keeps the first; the file keeps all."""
    report = "========= Invalid __shared__ read of size 1024 bytes\n=========     at fwd_o_kernel+0x1a30\n"
    cmd = lambda c, B, T: [sys.executable, "-c", f"import sys; sys.stderr.write({report!r}); sys.exit(99)"]  # noqa
    res = matrix("fwd_o", [0], [(2, 64)], 1, cmd, 60, ["BV32_w4_s1"], tmp_path)
    assert res[0] == ["fault ========= Invalid __shared__ read of size 1024 bytes"]
    kept = (tmp_path / "cell_fwd_o_BV32_w4_s1_2x64_try1.txt").read_text()
    assert "at fwd_o_kernel+0x1a30" in kept and "result: fault " in kept and not list(tmp_path.glob("*.tmp"))
    assert "fwd_o_kernel+0x1a30" not in capsys.readouterr().out


def test_matrix_times_out_a_hung_cell(capsys):
    res = matrix("fwd_o", [0], [(1, 64)], 1, lambda c, B, T: [sys.executable, "-c", "import time; time.sleep(30)"],
                 1, ["cfgA"])
    assert res == {0: ["timeout"]} and "result:timeout" in capsys.readouterr().out


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "gpu" / "fault_matrix.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(TRITON_DIR)})


def test_arguments_are_refused_by_name_before_any_cell():
    r = run_tool("--kernel", "fwd_o", "--configs", "0,11")
    assert r.returncode == 2 and "--configs '0,11'" in r.stderr and "0=BV32_w4_s2" in r.stderr, r.stderr[-2000:]
    r = run_tool("--kernel", "fwd_o", "--shapes", "2x100")
    assert r.returncode == 2 and "--shapes '2x100'" in r.stderr, r.stderr[-2000:]
    r = run_tool("--kernel", "fwd_o", "--repeat", "0")
    assert r.returncode == 2 and "--repeat 0" in r.stderr, r.stderr[-2000:]
    r = run_tool("--kernel", "fwd_o", "--timeout", "0")
    assert r.returncode == 2 and "--timeout 0: expected a positive number" in r.stderr, r.stderr[-2000:]
    r = run_tool("--kernel", "fwd_o", "--keep", "/proc/none/cells")
    assert r.returncode == 2 and "--keep /proc/none/cells: cannot create" in r.stderr, r.stderr[-2000:]
    r = run_tool("--kernel", "conv")
    assert r.returncode == 2 and "--kernel" in r.stderr and "fwd_o" in r.stderr, r.stderr[-2000:]
    assert "fault_cell" not in r.stdout


def test_no_cuda_is_said_before_any_cell():
    """On a machine without CUDA (this one, CI's) the matrix stops at once instead of running cells that fail."""
    import pytest
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    r = run_tool("--kernel", "fwd_o")
    assert r.returncode == 2 and "--device cuda needs a CUDA device" in r.stderr, r.stderr[-2000:]
    assert "fault_cell" not in r.stdout


CELL = INTERP_PATCHES + textwrap.dedent("""
    sys.path.insert(0, sys.argv[-1])
    from tools.gpu.fault_matrix import main
    sys.exit(main(["--kernel", sys.argv[2], "--device", "cpu", "--cell", sys.argv[3], "1", "128"]))
""")


def test_a_real_cell_on_cpu():
    """One cell as the matrix runs it, on the CPU: our output kernel held to config 3 (BV64, 4 warps, 1 stage),
    our dq/dk/dw/dg kernel and our WY backward to config 0, each against FLA's path at 1x128, fp32."""
    require_fla()
    for kernel, config in (("fwd_o", "3"), ("dqkwg", "0"), ("wy_bwd", "0")):
        r = run_with_triton(CELL, kernel, config)
        res = classify(r.returncode, r.stdout + r.stderr)
        assert res.startswith("ok max_rel_diff:"), (kernel, res, r.stderr[-3000:])
        assert float(res.split(":")[1]) < 1e-5, (kernel, res)
    r = run_with_triton(CELL, "fwd_o", "11")  # out of range: named, not run
    assert "error rc=1 ValueError: config 11: fwd_o has configs 0..10" == classify(r.returncode, r.stdout + r.stderr)
