"""Shared by the GPU check and benchmark tools: the error measure, parsing of comma-separated options, the two
ways they time GPU work (CUDA events per call, or one CUDA graph of many calls), and FLA's autotuning per process."""

from __future__ import annotations

import argparse
import os
import statistics

import torch


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error ||x - ref|| / ||ref|| in float64; inf when x holds a NaN or an inf."""
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def fla_tuned_per_process() -> None:
    """Before fla is imported: its autotune picks made in this process, at the shapes it runs, not read from
    Triton's disk cache, whose keys hold no length or batch (FLA_CACHE_RESULTS=0 unless set; training runs do the
    same, train_gpt_gdn.import_fla)."""
    os.environ.setdefault("FLA_CACHE_RESULTS", "0")


def positive_ints(parser: argparse.ArgumentParser, option: str, text: str, minimum: int = 1) -> list[int]:
    """Comma-separated positive integers of one option (e.g. --seq-lens 1024,8192), or whole numbers with
    minimum=0 (e.g. --segments 0,16, where 0 means off); anything else stops the tool through parser.error (one
    line naming the option, exit 2) before any work."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        what = "positive integers" if minimum == 1 else "whole numbers" if minimum == 0 else f"integers >= {minimum}"
        parser.error(f"{option} {text!r}: expected comma-separated {what}")
    return values


def event_ms(fn, iters: int = 10, warmup: int = 3) -> float:
    """Median GPU ms of fn() over iters calls, each between two CUDA events and synchronised, after warm-up calls
    (compilation, autotuning). For work of a millisecond or more, whose launch time the GPU hides."""
    times = []
    for i in range(warmup + iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def graph_ms(fn, iters: int = 20, warmup: int = 3) -> float:
    """Mean GPU ms per call of fn: warm-up calls on a side stream, then iters calls captured as one CUDA graph and
    replayed, so that the CPU's launch time (larger than a small shape's kernels) is not measured. fn must be
    capturable (no synchronisation, no allocation that depends on data)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters
