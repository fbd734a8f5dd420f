"""PANet neck: a top-down (FPN) pass then a bottom-up pass over any number of levels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from yolopose.nn.blocks import C3, ConvBnAct


class PAN(nn.Module):
    """Path-aggregation neck in the YOLOv5 style.

    Args:
        in_channels: channels of the backbone levels, shallow to deep (e.g. P3..P6).
        depth_n: bottlenecks in each C3 of the neck.
        act: activation name.

    ``forward(feats)`` takes ``len(in_channels)`` maps, level ``i`` of shape ``(B, in_channels[i], H_i, W_i)``
    with ``H_i = 2 * H_{i+1}``, and returns maps of the same spatial sizes with ``out_channels[i] ==
    in_channels[i]``.
    """

    def __init__(self, in_channels: list[int], depth_n: int = 1, act: str = "silu") -> None:
        super().__init__()
        n = len(in_channels)
        if n < 2:
            raise ValueError("PAN needs at least two levels")
        # Top-down: for level i (deep -> shallow), a 1x1 lateral conv shrinks the deeper map to
        # in_channels[i] before upsampling; a C3 fuses the concatenation.
        self.lateral = nn.ModuleList(ConvBnAct(in_channels[i + 1], in_channels[i], 1, act=act)
                                     for i in range(n - 1))
        self.td_fuse = nn.ModuleList(C3(2 * in_channels[i], in_channels[i], depth_n, shortcut=False, act=act)
                                     for i in range(n - 1))
        # Bottom-up: a 3x3/2 conv takes level i to level i+1's resolution; concatenated with the
        # lateral map of level i+1 (in_channels[i]) and fused back to in_channels[i + 1].
        self.down = nn.ModuleList(ConvBnAct(in_channels[i], in_channels[i], 3, 2, act=act) for i in range(n - 1))
        self.bu_fuse = nn.ModuleList(C3(2 * in_channels[i], in_channels[i + 1], depth_n, shortcut=False, act=act)
                                     for i in range(n - 1))
        self.out_channels: list[int] = list(in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(feats)
        # Top-down, deepest first. x is the running map; laterals[i] keeps the reduced map that
        # came down from level i+1 (channels in_channels[i], resolution of level i+1).
        x = feats[-1]
        laterals: list[torch.Tensor] = [feats[-1]] * (n - 1)
        for i in range(n - 2, -1, -1):
            lat = self.lateral[i](x)                              # C_{i+1} -> C_i, stride of level i+1
            laterals[i] = lat
            up = F.interpolate(lat, scale_factor=2.0, mode="nearest")  # to stride of level i
            x = self.td_fuse[i](torch.cat((up, feats[i]), dim=1))     # 2*C_i -> C_i
        outs = [x]                                                # finest output (P3)
        # Bottom-up, shallowest first: each level joins the lateral map kept at its resolution.
        for i in range(n - 1):
            d = self.down[i](x)                                   # C_i, stride of level i+1
            x = self.bu_fuse[i](torch.cat((d, laterals[i]), dim=1))   # 2*C_i -> C_{i+1}
            outs.append(x)
        return outs
