"""What an atomic checkpoint write costs: ``AtomicCheckpointIO`` (temporary file in the checkpoint's folder,
fsync, rename, folder fsync) beside Lightning's default ``TorchCheckpointIO``.

    python -m benchmarks --only checkpoint [--threads 1]

For the ``n`` and ``s`` models (K = 17): a full training checkpoint as ``last.ckpt`` holds it (model and EMA
weights, SGD momentum buffers, hyperparameters), written over the same file again and again into a
temporary folder under the current directory (where ``runs/`` goes). The two writers alternate, so they
see the same load and the same disk. Wall time, not CPU time: the fsync waits on the disk.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from benchmarks.common import Config, Table, load_note, set_threads
from yolopose.checkpoint_io import AtomicCheckpointIO
from yolopose.module import PoseModule
from yolopose.optim import build_optimizer, parameter_groups


def training_checkpoint(variant: str) -> dict:
    """A ``last.ckpt``-shaped dict of ``PoseModule(variant)`` after one SGD step (so momentum buffers exist)."""
    torch.manual_seed(0)
    module = PoseModule(num_keypoints=17, variant=variant)
    opt = build_optimizer("sgd", parameter_groups(module.model, 5e-4), 0.01, 0.937, True)
    for p in module.model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    return {"epoch": 0, "global_step": 1, "state_dict": module.state_dict(), "optimizer_states": [opt.state_dict()],
            "hyper_parameters": dict(module.hparams)}


def _alternate(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, run alternately after one warm-up each."""
    ta, tb = [], []
    a(), b()
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def checkpoint_rows(variants: str, repeats: int, folder: Path) -> list[list[object]]:
    """``[variant, size MB, Lightning ms, atomic ms, ratio]`` rows."""
    rows = []
    for variant in variants:
        ckpt = training_checkpoint(variant)
        plain, atomic = folder / f"plain-{variant}.ckpt", folder / f"atomic-{variant}.ckpt"
        t_plain, t_atomic = _alternate(lambda: TorchCheckpointIO().save_checkpoint(ckpt, plain),
                                       lambda: AtomicCheckpointIO().save_checkpoint(ckpt, atomic), repeats)
        size = atomic.stat().st_size / 1e6
        rows.append([variant, f"{size:.1f}", f"{t_plain * 1e3:.0f}", f"{t_atomic * 1e3:.0f}",
                     f"{t_atomic / t_plain:.2f}"])
    return rows


def run(cfg: Config, variants: str | None = None, repeats: int | None = None) -> list[Table]:
    """The checkpoint-write table (``python -m benchmarks --only checkpoint``)."""
    set_threads(cfg.threads)
    variants = variants or ("n" if cfg.quick else "ns")
    repeats = repeats or (3 if cfg.quick else 9)
    notes: list[str] = []
    with load_note(notes), tempfile.TemporaryDirectory(dir=os.getcwd(), prefix=".ckpt-bench-") as tmp:
        rows = checkpoint_rows(variants, repeats, Path(tmp))
    return [Table(f"Writing a training checkpoint (median of {repeats}, alternating writers)",
                  ["variant", "checkpoint MB", "Lightning default ms", "atomic (fsync + rename) ms", "ratio"],
                  rows, notes)]
