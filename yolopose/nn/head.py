"""Anchor-based pose head: per level, a detection branch and a keypoint branch."""
from __future__ import annotations

import math

import torch
from torch import nn

from yolopose.nn.blocks import ConvBnAct, DWConv

PAPER_KPT_HEAD_DEPTH = 6
"""Depthwise 3x3 blocks in the keypoint branch by default: the YOLO-Pose paper's choice (a stack of
depthwise + pointwise blocks, which gained ~2 AP over a single 1x1 conv at s6/960)."""


def keypoint_branch(channels: int, out: int, depth: int, act: str) -> nn.Sequential:
    """``depth`` x [DW 3x3 (+ PW 1x1 between blocks)] then a 1x1 prediction conv to ``out`` channels.

    ``depth = 0`` gives the plain 1x1 conv of a detection head. Maps ``(B, channels, H, W) -> (B, out, H, W)``.
    """
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(DWConv(channels, 3, act=act))
        if i < depth - 1:
            layers.append(ConvBnAct(channels, channels, 1, act=act))
    layers.append(nn.Conv2d(channels, out, 1))
    return nn.Sequential(*layers)


def predict_float32(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` with autocast turned off and ``x`` cast to float32 when autocast is on.

    The final 1x1 prediction convs produce the raw offsets that decode multiplies by the stride: in bf16 a
    keypoint offset of 6 cells keeps steps of 1/32 cell (0.5-2 px at strides 16-64), so they run in float32
    (a small share of the head's work). Without autocast (fp32 training, export) this is ``conv(x)``.
    """
    if not torch.is_autocast_enabled(x.device.type):
        return conv(x)
    with torch.autocast(x.device.type, enabled=False):
        return conv(x.float())


class PoseHead(nn.Module):
    """Per level: ``det`` conv -> A x (4 box + 1 obj + C cls), ``kpt`` branch -> A x 3K.

    Args:
        in_channels: channels of each neck level.
        strides: stride of each level (used for the objectness prior).
        num_anchors: anchors per level (A).
        num_classes: C.
        num_keypoints: K.
        kpt_head_depth: depthwise blocks in the keypoint branch (see ``keypoint_branch``).
        act: activation name.
        kpt_uncertainty: also predict a log-scale per keypoint (``kpt_scale``, a 1x1 conv beside the keypoint
            prediction conv), read only by the training loss's likelihood term; ``forward`` never returns it.

    ``forward(feats)`` maps level ``i`` ``(B, in_channels[i], H, W)`` to ``(B, A, H, W, 5 + C + 3K)``; under
    autocast the final 1x1 prediction convs run in float32 (``predict_float32``), so the maps are float32.
    ``forward_with_scales(feats)`` returns those maps and, per level, the ``(B, A, H, W, K)`` log-scales.
    """

    def __init__(self, in_channels: list[int], strides: list[int], *, num_anchors: int, num_classes: int,
                 num_keypoints: int, kpt_head_depth: int = PAPER_KPT_HEAD_DEPTH, act: str = "silu",
                 anchors: torch.Tensor | None = None, keypoint_prior: torch.Tensor | None = None,
                 kpt_uncertainty: bool = False) -> None:
        super().__init__()
        self.num_anchors, self.num_classes, self.num_keypoints = num_anchors, num_classes, num_keypoints
        self.det = nn.ModuleList(nn.Conv2d(c, num_anchors * (5 + num_classes), 1) for c in in_channels)
        self.kpt = nn.ModuleList(keypoint_branch(c, num_anchors * 3 * num_keypoints, kpt_head_depth, act)
                                 for c in in_channels)
        self.kpt_scale = nn.ModuleList(nn.Conv2d(branch[-1].in_channels, num_anchors * num_keypoints, 1)
                                       for branch in self.kpt) if kpt_uncertainty else None
        self._init_biases(strides)
        if self.kpt_scale is not None:
            for conv in self.kpt_scale:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        if keypoint_prior is not None and anchors is not None:
            self._init_keypoint_biases(strides, anchors, keypoint_prior)

    def _init_biases(self, strides: list[int], objects_per_640: float = 8.0) -> None:
        """Objectness prior: ~``objects_per_640`` objects in a 640x640 image; class prior ~0.6/C."""
        a, c = self.num_anchors, self.num_classes
        for conv, s in zip(self.det, strides):
            bias = conv.bias.detach().view(a, 5 + c)
            p_obj = objects_per_640 / (640 / s) ** 2
            bias[:, 4] = math.log(p_obj / (1 - p_obj))
            p_cls = min(0.6 / max(c - 0.99, 0.01), 0.99)
            bias[:, 5:] = math.log(p_cls / (1 - p_cls))
            conv.bias.data = bias.view(-1)
        for branch in self.kpt:
            nn.init.zeros_(branch[-1].bias)

    @torch.no_grad()
    def _init_keypoint_biases(self, strides: list[int], anchors: torch.Tensor, prior: torch.Tensor) -> None:
        """Start each anchor's keypoints at the dataset's mean pose scaled to the anchor's size.

        ``prior (K, 2)`` is the mean offset of each keypoint from its box centre in box widths/heights
        (``LabelTable.mean_pose``); ``anchors (L, A, 2)`` pixels. With zero biases every keypoint starts
        at its cell, where the OKS loss ``1 - exp(-d^2 / 2s^2k^2)`` has almost no gradient for points far
        from the box centre (measured on the synthetic set: only ~1% of face keypoints are within reach
        at initialisation); decoding ``(2t - 0.5 + cell) * stride`` with ``t = 0.5 + offset / (2 stride)``
        puts them at ``cell centre + prior * anchor`` instead. Only the starting point changes: the
        prediction stays anchor-relative and unnormalised, as the decode defines it.
        """
        k = self.num_keypoints
        prior = torch.as_tensor(prior, dtype=torch.float32).reshape(k, 2)
        for branch, stride, level_anchors in zip(self.kpt, strides, anchors):
            bias = branch[-1].bias.view(self.num_anchors, k, 3)
            offset = prior[None] * level_anchors.to(torch.float32)[:, None, :]      # (A, K, 2) pixels
            bias[..., :2] = 0.5 + offset / (2 * stride)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return self._run(feats, with_scales=False)[0]

    def forward_with_scales(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The raw maps and the keypoint log-scales ``(B, A, H, W, K)`` of each level (needs ``kpt_uncertainty``)."""
        if self.kpt_scale is None:
            raise ValueError("this head predicts no keypoint scales (built without kpt_uncertainty)")
        return self._run(feats, with_scales=True)

    def _run(self, feats: list[torch.Tensor], with_scales: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        outs, scales = [], []
        a, k = self.num_anchors, self.num_keypoints
        for i, (x, det, kpt) in enumerate(zip(feats, self.det, self.kpt)):
            b, _, h, w = x.shape
            d = predict_float32(det, x).view(b, a, 5 + self.num_classes, h, w)
            f = kpt[:-1](x)
            kp = predict_float32(kpt[-1], f).view(b, a, 3 * k, h, w)
            outs.append(torch.cat((d, kp), dim=2).permute(0, 1, 3, 4, 2).contiguous())
            if with_scales:
                scales.append(predict_float32(self.kpt_scale[i], f).view(b, a, k, h, w).permute(0, 1, 3, 4, 2))
        return outs, scales
