"""Parameter groups, the optimiser, and the warm-up + decay schedule (a pure function of the step)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Three groups: conv/linear weights (with decay), norm weights (no decay), biases (no decay).

    The bias group is last and flagged ``is_bias`` so the warm-up can treat it differently.
    """
    decay, no_decay, bias = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                bias.append(p)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                no_decay.append(p)
            else:
                decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "is_bias": False},
        {"params": no_decay, "weight_decay": 0.0, "is_bias": False},
        {"params": bias, "weight_decay": 0.0, "is_bias": True},
    ]


def fused_devices() -> set[str]:
    """Device types torch has fused AdamW / SGD kernels for (it checks them only at ``step()``)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        return set(_get_fused_kernels_supported_devices())
    except ImportError:  # a torch without the helper: the two devices yolopose measured
        return {"cpu", "cuda"}


def build_optimizer(name: Literal["sgd", "adamw"], groups: list[dict], lr: float, momentum: float,
                    nesterov: bool, allow_fused: bool = True) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW (``momentum`` as beta1) over ``groups``, with torch's fused kernel
    where this build has one for every parameter's device and dtype, else the default implementation (same maths).

    Fused matters on CPU: one AdamW step of the ``n`` model (3.9M parameters, 2 threads) took 18 ms with the
    default implementation and 5 ms fused (``python -m benchmarks --only optimizer --threads 2``). The choice is
    made here, before training: torch accepts ``fused=True`` for any device and refuses an unsupported one only
    at the first ``step()``.

    Args:
        allow_fused: ``False`` forces the default implementation (a fused optimiser unscales fp16 gradients
            itself, so Lightning cannot clip them: ``PoseModule`` passes ``False`` for ``16-mixed`` + clipping).
    """
    if name == "adamw":
        cls, kwargs = torch.optim.AdamW, {"lr": lr, "betas": (momentum, 0.999)}
    elif name == "sgd":
        cls, kwargs = torch.optim.SGD, {"lr": lr, "momentum": momentum, "nesterov": nesterov}
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")
    params = [p for g in groups for p in g["params"]]
    devices = fused_devices()
    fused = allow_fused and all(p.is_floating_point() and p.device.type in devices for p in params)
    if fused:
        try:
            return cls(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):   # a torch whose constructor refuses (e.g. before 2.4 on CPU)
            pass
    return cls(groups, **kwargs)


@dataclass
class WarmupSchedule:
    """Learning rate and momentum at any optimiser step.

    Decay over the whole run: ``lr * f(progress)``, ``f`` cosine or linear from 1 to ``lr_final``
    (a fraction of ``lr``). During the first ``warmup_steps`` steps, every group's LR rises linearly
    from 0 (biases: from ``warmup_bias_lr``, falling) to its scheduled value, and momentum rises
    from ``warmup_momentum`` to ``momentum`` (the YOLOv5 recipe).
    """

    lr: float
    lr_final: float
    total_steps: int
    warmup_steps: int
    momentum: float
    warmup_momentum: float
    warmup_bias_lr: float
    kind: Literal["cosine", "linear"] = "cosine"

    def decay_factor(self, step: int) -> float:
        p = min(step / max(self.total_steps, 1), 1.0)
        if self.kind == "cosine":
            return self.lr_final + (1 - self.lr_final) * (1 + math.cos(math.pi * p)) / 2
        return 1 - p * (1 - self.lr_final)

    def at(self, step: int, is_bias: bool) -> tuple[float, float]:
        """``(lr, momentum)`` of a group at ``step``."""
        target = self.lr * self.decay_factor(step)
        if step >= self.warmup_steps:
            return target, self.momentum
        t = step / self.warmup_steps
        start = self.warmup_bias_lr if is_bias else 0.0
        return start + (target - start) * t, self.warmup_momentum + (self.momentum - self.warmup_momentum) * t

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        for group in optimizer.param_groups:
            lr, momentum = self.at(step, group.get("is_bias", False))
            group["lr"] = lr
            if "momentum" in group:
                group["momentum"] = momentum
            elif "betas" in group:  # Adam-type: the first beta plays momentum's role
                group["betas"] = (momentum, group["betas"][1])
