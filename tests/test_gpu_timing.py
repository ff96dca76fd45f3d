"""The GPU tools' timing helpers (tools/checks.py: event_ms, graph_ms) on a CUDA device: each calls the timed
function warmup + iters times (graph_ms: iters of them while capturing its graph) and returns a positive time.
No assertion on how long anything takes (speed belongs in benchmarks). Skipped without CUDA (CI has none)."""
import pytest
import torch

from tools.checks import event_ms, graph_ms

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("timer", [event_ms, graph_ms])
def test_timer_calls_and_returns(timer):
    calls = []
    x = torch.zeros(1024, device="cuda")

    def fn():
        calls.append(1)
        x.add_(1.0)

    ms = timer(fn, iters=5, warmup=2)
    assert len(calls) == 2 + 5
    assert ms > 0
