"""tools/state_chain_precision.py: the rounding emulation of the v22 candidate's chain against FLA's recurrence."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO))
from tools.state_chain_precision import errors, tf32  # noqa: E402


def test_tf32_rounds_to_a_10_bit_mantissa():
    x = torch.tensor([1 + 2 ** -10, 1 + 2 ** -12, 1 + 2 ** -11 + 2 ** -20, -3.0], dtype=torch.float64)
    assert tf32(x).tolist() == [1 + 2 ** -10, 1.0, 1 + 2 ** -10, -3.0]


def test_chain_rounds_like_fla():
    """Over 16 chunks of the study's head shapes both forms sit at bf16-storage error against float64 (~2e-3), the
    chain no worse than FLA's form by more than a quarter; neither exact (the emulation rounds)."""
    errs = errors(1024, seed=0)
    (fla_stored, fla_last), (chain_stored, chain_last) = errs["fla"], errs["chain"]
    assert 1e-4 < fla_stored < 1e-2 and 1e-4 < chain_stored < 1e-2, errs
    assert chain_stored < 1.25 * fla_stored and chain_last < 1.25 * fla_last + 1e-6, errs


def test_cli_refuses_a_length_off_the_chunk():
    from tools.state_chain_precision import main
    with pytest.raises(SystemExit) as e:
        main(["--seq-len", "100"])
    assert e.value.code == 2
