"""The GPU tools' timing helpers (tools/checks.py: event_ms, graph_ms) on a CUDA device: each reads a kernel that
spins for twice as many cycles as about twice as long. Skipped without CUDA (CI has none)."""
import pytest
import torch

from tools.checks import event_ms, graph_ms

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("timer", [event_ms, graph_ms])
def test_timer_scales_with_the_work(timer):
    cycles = 2_000_000  # ~1 ms at ~2 GHz: well above launch and event overheads
    short = timer(lambda: torch.cuda._sleep(cycles), iters=5)
    long = timer(lambda: torch.cuda._sleep(2 * cycles), iters=5)
    assert 0 < short < long
    assert 1.6 < long / short < 2.4
