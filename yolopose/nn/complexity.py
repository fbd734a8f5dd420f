"""Parameter and multiply-accumulate (MAC) counts of a model, measured by running it once."""
from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int | tuple[int, int] = 640) -> int:
    """MACs of one forward pass on a ``(1, 3, H, W)`` input, counting Conv2d and Linear layers.

    A conv's MACs are ``output elements * (c_in / groups) * kh * kw``; normalisation, activations,
    pooling, upsampling and element-wise adds are not counted (the usual convention of papers that
    quote GMACs/GFLOPs, where GFLOPs = 2 x GMACs).
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    total = 0

    def on_conv(m: nn.Conv2d, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def on_linear(m: nn.Linear, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(on_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(on_linear) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, h, w, device=p.device, dtype=p.dtype))
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)
    return total
