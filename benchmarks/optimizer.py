"""The per-step cost outside forward/backward: optimiser step and weight-EMA update, ours vs per-tensor loops.

    python -m benchmarks --only optimizer [--threads 1] [--device cpu|cuda]

For the ``n`` and ``s`` models (K = 17) with random gradients: one optimiser step as ``PoseModule`` builds it
(``yolopose.optim.build_optimizer``: torch's fused kernel where it has one) beside the same optimiser with
torch's default implementation, and one ``ModelEMA.update`` (one multi-tensor lerp) beside a ``lerp_`` per
tensor (this project's former EMA). Both of a pair run interleaved in one process, so they see the same load.
On a CPU these costs do not shrink with the input size: at the CPU demo's 192 px they were ~15 % of a step.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from benchmarks.common import Config, Table, load_note, set_threads, times
from yolopose import YOLOPose
from yolopose.ema import ModelEMA
from yolopose.optim import build_optimizer, parameter_groups


def loop_ema_update(ema: ModelEMA, model: torch.nn.Module) -> None:
    """The reference: the former ``ModelEMA.update``, one ``lerp_`` per tensor and the count read from the
    ``updates`` buffer (``ModelEMA.current_decay`` reads a host copy that this loop does not advance)."""
    ema.updates += 1
    d = ema.decay_at(int(ema.updates))
    ema_state = ema.module.state_dict()
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                ema_state[name].lerp_(value, 1 - d)
            else:
                ema_state[name].copy_(value)


def _pair_ms(a: Callable[[], object], b: Callable[[], object], repeats: int, device: str) -> tuple[float, float]:
    """Median ms of ``a`` and ``b``, measured alternately."""
    ta, tb = [], []
    for fn in (a, b):
        fn()                                                    # warm-up (optimiser state allocation)
    for _ in range(repeats):
        ta += times(a, repeats=1, warmup=0, device=device)
        tb += times(b, repeats=1, warmup=0, device=device)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def optimizer_rows(variants: str, repeats: int, device: str = "cpu") -> list[list[object]]:
    """``[variant, params (M), part, ours ms, reference ms, speed-up]`` rows."""
    rows = []
    for variant in variants:
        torch.manual_seed(0)
        model = YOLOPose(variant, num_keypoints=17).to(device)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        n = sum(p.numel() for p in model.parameters()) / 1e6
        for name, momentum in (("adamw", 0.9), ("sgd", 0.937)):
            ours = build_optimizer(name, parameter_groups(model, 1e-5), 1e-6, momentum, True)
            ref_cls = torch.optim.AdamW if name == "adamw" else torch.optim.SGD
            ref_kw = {"betas": (momentum, 0.999)} if name == "adamw" else {"momentum": momentum, "nesterov": True}
            ref = ref_cls(parameter_groups(model, 1e-5), lr=1e-6, **ref_kw)
            fused = ours.defaults.get("fused") or False
            t_ours, t_ref = _pair_ms(ours.step, ref.step, repeats, device)
            rows.append([variant, f"{n:.2f}", f"{name} step ({'fused' if fused else 'default'} vs default)",
                         f"{t_ours:.1f}", f"{t_ref:.1f}", f"{t_ref / t_ours:.2f}"])
        ema_a, ema_b = ModelEMA(model, 0.998, 200), ModelEMA(model, 0.998, 200)
        t_ours, t_ref = _pair_ms(lambda: ema_a.update(model), lambda: loop_ema_update(ema_b, model), repeats, device)
        rows.append([variant, f"{n:.2f}", "EMA update (foreach vs lerp_ per tensor)", f"{t_ours:.1f}",
                     f"{t_ref:.1f}", f"{t_ref / t_ours:.2f}"])
    return rows


def run(cfg: Config, variants: str | None = None, repeats: int | None = None) -> list[Table]:
    """The optimiser/EMA table (``python -m benchmarks --only optimizer``)."""
    set_threads(cfg.threads)
    variants = variants or ("n" if cfg.quick else "ns")
    repeats = repeats or (5 if cfg.quick else 20)
    notes: list[str] = []
    with load_note(notes):
        rows = optimizer_rows(variants, repeats, cfg.device)
    return [Table(f"Optimiser step and EMA update ({cfg.device}, {cfg.threads} thread(s), median of {repeats})",
                  ["variant", "params (M)", "part", "ours ms", "reference ms", "speed-up"], rows, notes)]
