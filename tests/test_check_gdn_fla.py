"""tools/check_gdn_fla.py's main() on the CPU with its checks stood in for: the verdict line comes right after the
rows, before the timing lines (a run cut short while timing still reports it), and --no-timing skips those."""
import sys
import types

import pytest
import torch

from tools import check_gdn_fla as check


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stand-in")
    for mod in ("fla", "triton"):  # main() imports both for its header line
        monkeypatch.setitem(sys.modules, mod, types.SimpleNamespace(__version__="0"))
    g = check.gdn
    monkeypatch.setattr(g, "triton_breaks_hopper_gdn", lambda dev: "")
    for name in ("register_fla_gdn_op", "register_fla_gdn_state_op", "register_conv_op"):
        monkeypatch.setattr(g, name, lambda: None)
    monkeypatch.setattr(check, "check_conv", lambda *a, **k: [("conv", "o", 1e-3, 2e-2)])
    monkeypatch.setattr(check, "check_layer", lambda *a, **k: [("layer", "out", 1e-3, 2e-2)])

    def cut_short(*a, **k):
        raise KeyboardInterrupt("the timing was cut short")
    monkeypatch.setattr(check, "time_op", cut_short)


# rows: two head-dim pairs at one T from check_op, conv at two T, one layer row
@pytest.mark.parametrize("err,expect", [(1e-3, "gdn_check: 5 passed, 0 failed"), (0.5, "gdn_check: 3 passed, 2 failed")])
def test_verdict_before_timing(fake_gpu, monkeypatch, capsys, err, expect):
    monkeypatch.setattr(check, "check_op", lambda *a, **k: [("op", "o", err, 2e-2)])
    monkeypatch.setattr(sys, "argv", ["check_gdn_fla.py", "--seq-lens", "100"])
    with pytest.raises(KeyboardInterrupt):
        check.main()
    out = capsys.readouterr().out
    assert expect in out and "timing" not in out
    monkeypatch.setattr(sys, "argv", ["check_gdn_fla.py", "--seq-lens", "100", "--no-timing"])
    assert check.main() == (0 if err < 2e-2 else 1)
    assert capsys.readouterr().out.strip().splitlines()[-1] == expect
