"""Shared by the GPU check tools (check_attention, check_gdn_fla, check_compile): the error measure."""

from __future__ import annotations

import torch


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error ||x - ref|| / ||ref|| in float64; inf when x holds a NaN or an inf."""
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()
