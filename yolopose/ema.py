"""Exponential moving average of a model's weights (and BatchNorm buffers)."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA(nn.Module):
    """Keeps ``module``: an EMA copy of a model, updated after every optimiser step.

    The decay ramps up as ``decay * (1 - exp(-updates / tau))`` so early weights, which change fast,
    are not averaged in for long. Being an ``nn.Module`` attribute of the LightningModule, the EMA
    copy and its update count travel in ``state_dict`` (checkpoints) and across devices.

    Args:
        model: the model to track (deep-copied; the copy never requires grad).
        decay: asymptotic decay.
        tau: ramp-up time constant in updates.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau = decay, tau
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-int(self.updates) / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move every floating-point parameter and buffer towards ``model``'s."""
        self.updates += 1
        d = self.current_decay()
        ema_state = self.module.state_dict()
        for name, value in model.state_dict().items():
            ema_value = ema_state[name]
            if ema_value.dtype.is_floating_point:
                ema_value.lerp_(value.detach().to(ema_value.dtype), 1 - d)
            else:
                ema_value.copy_(value)

    def train(self, mode: bool = True) -> "ModelEMA":
        """The EMA copy always stays in eval mode (BatchNorm uses its averaged statistics)."""
        super().train(False)
        return self
