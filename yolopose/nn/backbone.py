"""CSP-Darknet backbone (YOLOv5 v6 layout) with an optional extra stride-64 stage."""
from __future__ import annotations

import math

import torch
from torch import nn

from yolopose.nn.blocks import C3, SPPF, ConvBnAct

# Base (width = 1.0) channels of the stem and of the stages at strides 4, 8, 16, 32, 64.
_STEM_CHANNELS = 64
_STAGE_CHANNELS = (128, 256, 512, 768, 1024)
# Base number of bottlenecks in each stage's C3 (depth = 1.0).
_STAGE_DEPTHS = (3, 6, 9, 3, 3)


def scale_width(channels: int, width: float, divisor: int = 8) -> int:
    """Channels times ``width``, rounded up to a multiple of ``divisor``."""
    return max(divisor, int(math.ceil(channels * width / divisor) * divisor))


def scale_depth(n: int, depth: float) -> int:
    """Number of repeated blocks times ``depth``, at least one."""
    return max(1, round(n * depth))


class CSPDarknet(nn.Module):
    """CSP-Darknet: 6x6/2 stem, strided conv + C3 stages, SPPF on the deepest stage.

    Args:
        depth: multiplier on the number of bottlenecks per stage.
        width: multiplier on channels.
        num_levels: 4 gives P3-P6 (strides 8, 16, 32, 64); 3 gives P3-P5 (strides 8, 16, 32).
        act: activation name ("silu" or "relu").

    ``forward(x)`` maps ``(B, 3, H, W)`` to a list of ``num_levels`` maps, level ``i`` of shape
    ``(B, out_channels[i], H / strides[i], W / strides[i])``.
    """

    def __init__(self, depth: float = 0.33, width: float = 0.5, num_levels: int = 4, act: str = "silu") -> None:
        super().__init__()
        if num_levels not in (3, 4):
            raise ValueError(f"num_levels must be 3 (P3-P5) or 4 (P3-P6), got {num_levels}")
        # With 3 levels YOLOv5 ends on 1024 base channels at stride 32; with 4 the extra 768 stage sits before it.
        stage_channels = _STAGE_CHANNELS if num_levels == 4 else (128, 256, 512, 1024)
        stage_depths = _STAGE_DEPTHS if num_levels == 4 else (3, 6, 9, 3)
        c_prev = scale_width(_STEM_CHANNELS, width)
        self.stem = ConvBnAct(3, c_prev, kernel=6, stride=2, padding=2, act=act)  # stride 2
        self.stages = nn.ModuleList()
        channels: list[int] = []
        for i, (c_base, n_base) in enumerate(zip(stage_channels, stage_depths)):
            c = scale_width(c_base, width)
            layers: list[nn.Module] = [ConvBnAct(c_prev, c, 3, 2, act=act),
                                       C3(c, c, scale_depth(n_base, depth), act=act)]
            if i == len(stage_channels) - 1:
                layers.append(SPPF(c, c, act=act))
            self.stages.append(nn.Sequential(*layers))
            channels.append(c)
            c_prev = c
        # Stage 0 is stride 4 and is not an output; the rest are P3.. (strides 8, 16, 32[, 64]).
        self.out_channels: list[int] = channels[1:]
        self.strides: list[int] = [8 * 2**i for i in range(num_levels)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs: list[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i > 0:
                outs.append(x)
        return outs
