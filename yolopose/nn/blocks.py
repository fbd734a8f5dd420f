"""Convolutional building blocks shared by the backbone, neck and head.

Every block maps ``(B, c_in, H, W) -> (B, c_out, H', W')``; ``H' = H / stride``.
"""
from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name`` ("silu" or "relu")."""
    try:
        return ACTIVATIONS[name.lower()](inplace=True)
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class ConvBnAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation, 'same' padding for odd kernels."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: str = "silu", padding: int | None = None) -> None:
        super().__init__()
        pad = kernel // 2 if padding is None else padding
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(ConvBnAct):
    """Depthwise ConvBnAct: one filter per channel (``c_in == c_out``)."""

    def __init__(self, channels: int, kernel: int = 3, stride: int = 1, act: str = "silu") -> None:
        super().__init__(channels, channels, kernel, stride, groups=channels, act=act)


class Bottleneck(nn.Module):
    """1x1 then 3x3 conv, with a residual connection when ``shortcut`` and shapes allow."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True, act: str = "silu") -> None:
        super().__init__()
        self.cv1 = ConvBnAct(c_in, c_out, 1, act=act)
        self.cv2 = ConvBnAct(c_out, c_out, 3, act=act)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP block with three convs: half the channels go through ``n`` bottlenecks, half bypass."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True, act: str = "silu") -> None:
        super().__init__()
        hidden = c_out // 2
        self.cv1 = ConvBnAct(c_in, hidden, 1, act=act)
        self.cv2 = ConvBnAct(c_in, hidden, 1, act=act)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, act) for _ in range(n)))
        self.cv3 = ConvBnAct(2 * hidden, c_out, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools, concatenated."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 5, act: str = "silu") -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = ConvBnAct(c_in, hidden, 1, act=act)
        self.cv2 = ConvBnAct(hidden * 4, c_out, 1, act=act)
        self.pool = nn.MaxPool2d(kernel, stride=1, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat((x, y1, y2, self.pool(y2)), dim=1))
