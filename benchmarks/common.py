"""Shared measuring tools: a median timer and the machine's reference rates measured in-process."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def conv3x3_gflops(channels: int = 128, size: int = 80, repeats: int = 5) -> float:
    """Measured GFLOP/s (2 x MACs) of a plain 3x3 convolution: the reference rate for FLOP floors."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    x = torch.rand(1, channels, size, size)
    flops = 2 * channels * channels * 9 * size * size
    with torch.no_grad():
        t = median_time(lambda: conv(x), repeats=repeats)
    return flops / t / 1e9


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    """Print a Markdown table (pastes straight into the README)."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
