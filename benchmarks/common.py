"""Shared measuring tools: timers, the machine's reference rates measured in-process, Markdown tables.

Every benchmark module exposes functions that return table rows and a ``run(cfg) -> list[Table]`` used by
``python -m benchmarks`` (``benchmarks/run.py``); each keeps its own ``python -m benchmarks.NAME`` CLI.
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch


@dataclass
class Config:
    """What a suite run asks of every benchmark.

    Attributes:
        quick: CI-sized work (each benchmark < ~30 s at 1 thread) instead of the full-size figures of docs/benchmarks.md.
        threads: torch / OpenCV / ONNX Runtime intra-op threads.
        device: ``cpu`` or ``cuda`` (training step, its memory and eager model latency; ONNX Runtime stays on CPU).
        amp: ``None``, ``bf16`` or ``fp16``: ``torch.autocast`` around forward + loss (fp16 adds a ``GradScaler``).
        channels_last: the memory benchmark and eager latency use ``torch.channels_last`` (the training-step
            table always measures both formats).
    """

    quick: bool = False
    threads: int = 1
    device: str = "cpu"
    amp: Literal["bf16", "fp16"] | None = None
    channels_last: bool = False


@dataclass
class Table:
    """One Markdown table: ``title``, ``header``, ``rows`` and free-text ``notes`` printed under it."""

    title: str
    header: list[str]
    rows: list[list[object]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + list(self.notes)
        return "\n".join(lines)


def print_table(title: str | Table, header: list[str] | None = None, rows: list[list[object]] | None = None) -> None:
    """Print a Markdown table (pastes straight into docs/): ``print_table(Table)`` or ``(title, header, rows)``."""
    table = title if isinstance(title, Table) else Table(title, header or [], rows or [])
    print("\n" + table.markdown(), flush=True)


def set_threads(threads: int) -> None:
    """Pin torch's intra-op pool (and OpenCV's, when present) to ``threads``."""
    torch.set_num_threads(threads)
    with contextlib.suppress(ImportError):
        import cv2

        cv2.setNumThreads(threads)


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work (a no-op on CPU): call before reading a timer."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 2,
                device: str | torch.device = "cpu") -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs (GPU-synchronised)."""
    return statistics.median(times(fn, repeats, warmup, device))


def times(fn: Callable[[], object], repeats: int = 5, warmup: int = 2,
          device: str | torch.device = "cpu") -> list[float]:
    """Wall times of ``repeats`` runs of ``fn()`` after ``warmup`` runs (GPU-synchronised)."""
    return wall_and_cpu_times(fn, repeats, warmup, device)[0]


def wall_and_cpu_times(fn: Callable[[], object], repeats: int = 5, warmup: int = 2,
                       device: str | torch.device = "cpu") -> tuple[list[float], list[float]]:
    """Wall times and this process's CPU times of ``repeats`` runs of ``fn()`` after ``warmup`` runs.

    For single-threaded work on a shared machine the CPU time is the steadier figure: it does not count
    the time other jobs held the core (the wall time does).
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def conv3x3_gflops(channels: int = 128, size: int = 80, repeats: int = 5, device: str = "cpu",
                   dtype: torch.dtype | None = None, batch: int = 1) -> float:
    """Measured GFLOP/s (2 x MACs) of a plain 3x3 convolution: the reference rate for FLOP floors.

    On CUDA pass a larger ``batch``/``channels`` (a 1 x 128 x 80 x 80 conv is launch-bound there) and the
    autocast ``dtype`` the measured model runs in.
    """
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval().to(device)
    x = torch.rand(batch, channels, size, size, device=device)
    flops = 2 * batch * channels * channels * 9 * size * size
    with torch.no_grad(), autocast(device, dtype):
        t = median_time(lambda: conv(x), repeats=repeats, device=device)
    return flops / t / 1e9


def reference_conv_rate(cfg: Config) -> float:
    """``conv3x3_gflops`` sized for ``cfg.device`` and in its autocast precision."""
    if torch.device(cfg.device).type == "cuda":
        return conv3x3_gflops(256, 80, 20, cfg.device, amp_dtype(cfg.amp), batch=32)
    # 20 repeats: with 5, one slow repeat on a busy 2-core machine halved the rate and with it the floor.
    return conv3x3_gflops(repeats=20, device=cfg.device, dtype=amp_dtype(cfg.amp))


def amp_dtype(amp: str | None) -> torch.dtype | None:
    """``"bf16"`` / ``"fp16"`` / ``None`` -> the autocast dtype (``None``: no autocast)."""
    return {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def autocast(device: str | torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``device`` in ``dtype``; a null context when ``dtype`` is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    """The 1/5/15-minute load averages as ``"a b c"``."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_line(cfg: Config) -> str:
    """One line of machine facts for the top of a report."""
    parts = [f"torch {torch.__version__}"]
    with contextlib.suppress(ImportError):
        import onnxruntime

        parts.append(f"onnxruntime {onnxruntime.__version__}")
    parts += [f"{cfg.threads} thread(s)", f"{cpu_model()} ({os.cpu_count()} logical cores)"]
    if torch.device(cfg.device).type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(cfg.device)}")
    if cfg.amp:
        parts.append(f"autocast {cfg.amp}")
    parts.append(f"load average before: {load_average()}")
    return ", ".join(parts)


@contextlib.contextmanager
def load_note(notes: list[str]) -> Iterator[None]:
    """Append ``load average a -> b`` (1-minute, before and after the block) to ``notes``."""
    before = os.getloadavg()[0]
    yield
    notes.append(f"Load average (1 min) {before:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} "
                 "cores: this benchmark adds ~threads; more means other jobs shared the cores.")
