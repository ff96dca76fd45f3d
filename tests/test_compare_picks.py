"""tools/compare_picks.py: the kernels whose autotune picks differ between runs' `autotune_picks:` lines, the
digest that bench_step_time's probe lines carry, and clear refusals of a missing file or a log without picks."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools import compare_picks as cp  # noqa: E402

A = "gated_delta_rule.wy_fast.prepare_wy_repr_bwd_kernel=w4_s2 train_gpt_gdn.wy_bwd_kernel=BV64_w4_s2_r168"
B = "gated_delta_rule.wy_fast.prepare_wy_repr_bwd_kernel=w8_s2 train_gpt_gdn.wy_bwd_kernel=BV64_w4_s2_r168"


def write(path, *picks):
    path.write_text("step:10/10 train_loss:5.7629 train_time:6437ms step_avg:643.68ms\n"
                    + "".join(f"autotune_picks: {p}\n" for p in picks))
    return str(path)


def test_differing_kernels_and_digests(tmp_path, capsys):
    one, two = write(tmp_path / "one.txt", A), write(tmp_path / "two.txt", "stale", B)  # the last line counts
    three = write(tmp_path / "three.txt", A.split()[0])  # our kernel not tuned in that run
    assert cp.main([one, two, three]) == 0
    out = capsys.readouterr().out.splitlines()
    assert ("picks_differ kernel:gated_delta_rule.wy_fast.prepare_wy_repr_bwd_kernel "
            "one.txt=w4_s2 two.txt=w8_s2 three.txt=w4_s2") in out
    assert ("picks_differ kernel:train_gpt_gdn.wy_bwd_kernel one.txt=BV64_w4_s2_r168 two.txt=BV64_w4_s2_r168 "
            "three.txt=-") in out
    digests = {ln.split()[1]: ln.split()[2] for ln in out if ln.startswith("picks_digest")}
    assert digests["one.txt"] != digests["two.txt"] and digests["one.txt"] == f"picks:{cp.picks_digest(A)}"
    assert cp.picks_digest(A) == cp.picks_digest(A + "  ") and len(cp.picks_digest(A)) == 8


def test_same_picks(tmp_path, capsys):
    assert cp.main([write(tmp_path / "a.txt", A), write(tmp_path / "b.txt", A)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "picks: same in all 2 runs"


def test_refusals(tmp_path, capsys):
    assert cp.main([str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: no such file" in capsys.readouterr().err
    assert cp.main([write(tmp_path / "none.txt")]) == 2
    assert "none.txt: no `autotune_picks:` line" in capsys.readouterr().err
    assert cp.main([]) == 2 and "usage" in capsys.readouterr().err
    assert cp.parse_picks("none (Triton not imported)") == {}
