"""Shared by the GPU check and benchmark tools: the error measure, and parsing of comma-separated options."""

from __future__ import annotations

import argparse

import torch


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error ||x - ref|| / ||ref|| in float64; inf when x holds a NaN or an inf."""
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def positive_ints(parser: argparse.ArgumentParser, option: str, text: str) -> list[int]:
    """Comma-separated positive integers of one option (e.g. --seq-lens 1024,8192); anything else stops the tool
    through parser.error (one line naming the option, exit 2) before any work."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        parser.error(f"{option} {text!r}: expected comma-separated positive integers")
    return values
