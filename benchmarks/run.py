"""Run the benchmark suite and print one Markdown table per benchmark (docs/benchmarks.md is its `--out`).

    python -m benchmarks [--quick] [--only train,eval] [--threads 1] [--device cpu|cuda] [--amp bf16|fp16]
                         [--channels-last] [--out FILE]

Benchmarks (``--only`` names): ``model`` (params, GMACs, eager latency), ``train`` (training step img/s,
channels_last on/off, the loss alone), ``optimizer`` (optimiser step and EMA update vs per-tensor loops),
``memory`` (peak memory of a step, fresh subprocesses), ``data`` (train/val pipeline img/s per worker vs JPEG
decode), ``inference`` (ONNX Runtime vs eager vs FLOP floor), ``nms`` (decode + NMS at 1/10/100 people),
``topk`` (validation's pre-NMS cap 1000 vs 30 000 on a crowded image), ``eval`` (COCO evaluation of 1k/5k
images vs pycocotools alone), ``checkpoint`` (an atomic checkpoint write vs Lightning's default writer).

Every figure is a median of several runs after warm-up, shown beside a reference measured in the same run
(FLOP floor from a 3x3 conv's measured rate, JPEG decode rate, pycocotools alone). ``--quick`` is CI-sized
(about 2 minutes at 1 thread); the full mode gives the figures in docs/benchmarks.md (10-20 minutes). On a shared machine,
run with 1 thread: OpenMP's spin-waiting makes multi-threaded PyTorch many times slower while another job
holds a core. The header and each table's notes give the load average before and after.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable

from benchmarks.common import Config, Table, load_average, machine_line, set_threads

BENCHMARKS: dict[str, tuple[str, str]] = {
    "model": ("benchmarks.model", "run"),
    "train": ("benchmarks.train_step", "run"),
    "memory": ("benchmarks.train_step", "run_memory"),
    "optimizer": ("benchmarks.optimizer", "run"),
    "data": ("benchmarks.data_pipeline", "run"),
    "inference": ("benchmarks.inference", "run_latency"),
    "nms": ("benchmarks.inference", "run_nms"),
    "topk": ("benchmarks.inference", "run_top_k"),
    "eval": ("benchmarks.evaluation", "run"),
    "checkpoint": ("benchmarks.checkpoint", "run"),
}


def benchmark(name: str) -> Callable[[Config], list[Table]]:
    """The ``run(cfg) -> list[Table]`` function of benchmark ``name`` (imported on demand)."""
    module, func = BENCHMARKS[name]
    return getattr(importlib.import_module(module), func)


def parse_only(only: str | None) -> list[str]:
    names = list(BENCHMARKS) if not only else [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return names


def run_suite(cfg: Config, names: list[str], emit: Callable[[str], None] = print) -> list[Table]:
    """Run ``names`` in order, emitting the header, each table as soon as it is measured, and a footer."""
    set_threads(cfg.threads)
    start = time.perf_counter()
    emit(f"## yolopose benchmarks ({'quick' if cfg.quick else 'full'} mode)\n\n{machine_line(cfg)}")
    tables = []
    for name in names:
        t0 = time.perf_counter()
        result = benchmark(name)(cfg)
        result[-1].notes.append(f"(`{name}` took {time.perf_counter() - t0:.0f} s.)")
        for table in result:
            emit("\n" + table.markdown())
            tables.append(table)
    emit(f"\nLoad average after: {load_average()}; total {time.perf_counter() - start:.0f} s.")
    return tables


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI-sized runs (~2 min at 1 thread)")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    p.add_argument("--threads", type=int, default=1, help="torch/OpenCV/ONNX Runtime threads (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (training step, memory, eager model latency)")
    p.add_argument("--amp", choices=["bf16", "fp16"], help="autocast precision for the training step and memory")
    p.add_argument("--channels-last", action="store_true", help="memory and eager latency in channels_last")
    p.add_argument("--out", help="also write the Markdown report to this file")
    a = p.parse_args(argv)
    names = parse_only(a.only)
    if a.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))   # for the memory subprocesses
    cfg = Config(quick=a.quick, threads=a.threads, device=a.device, amp=a.amp, channels_last=a.channels_last)
    lines: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    run_suite(cfg, names, emit)
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"\n(written to {a.out})", file=sys.stderr)


if __name__ == "__main__":
    main()
