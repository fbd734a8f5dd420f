"""YOLOPose: CSP-Darknet backbone + PAN neck + anchor pose head, with n/s/m/l/x presets."""
from __future__ import annotations

import torch
from torch import nn

from yolopose.geometry import COCO_PERSON_NUM_KEYPOINTS
from yolopose.nn.backbone import CSPDarknet, scale_depth
from yolopose.nn.head import PAPER_KPT_HEAD_DEPTH, PoseHead
from yolopose.nn.neck import PAN

VARIANTS: dict[str, tuple[float, float]] = {
    "n": (0.33, 0.25),
    "s": (0.33, 0.50),
    "m": (0.67, 0.75),
    "l": (1.00, 1.00),
    "x": (1.33, 1.25),
}
"""Variant -> (depth multiple, width multiple)."""

ANCHORS_P3_P6: tuple[tuple[tuple[float, float], ...], ...] = (
    ((19, 27), (44, 40), (38, 94)),
    ((96, 68), (86, 152), (180, 137)),
    ((140, 301), (303, 264), (238, 542)),
    ((436, 615), (739, 380), (925, 792)),
)
"""Anchors (w, h) in pixels at a 640 input, three per level, as in the YOLO-Pose paper's s6 model."""

ANCHORS_P3_P5: tuple[tuple[tuple[float, float], ...], ...] = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
"""YOLOv5's default P3-P5 anchors, used when the model is built with three levels."""


def default_anchors(num_levels: int) -> list[list[list[float]]]:
    """Default anchors for 4 (P3-P6) or 3 (P3-P5) levels as nested lists ``[level][anchor][w, h]``."""
    table = ANCHORS_P3_P6 if num_levels == 4 else ANCHORS_P3_P5
    return [[list(map(float, a)) for a in level] for level in table]


class YOLOPose(nn.Module):
    """Multi-person pose model: one raw ``(B, A, H_l, W_l, 5 + C + 3K)`` map per level.

    Args:
        variant: size preset, one of ``n, s, m, l, x`` (the only positional argument; the rest are keyword-only).
        num_keypoints: K, from the dataset (the default, COCO person's 17, only serves the bare network).
        num_classes: C (1 for person-only datasets).
        num_levels: 4 for P3-P6 (strides 8..64) or 3 for P3-P5 (strides 8..32).
        anchors: ``[level][anchor][w, h]`` in input pixels; defaults to ``default_anchors(num_levels)``.
        kpt_head_depth: depthwise blocks in each keypoint branch (0 = a single 1x1 conv).
        act: "silu" (default) or "relu" (quantisation-friendly).
        depth, width: override the variant's multipliers.
        keypoint_prior: ``[K][2]`` mean keypoint offset from the box centre in box widths/heights (from the
            training data, ``LabelTable.mean_pose``): keypoint biases start at that pose (see ``PoseHead``).
        kpt_uncertainty: the head also predicts a log-scale per keypoint for the training loss's likelihood term
            (``forward_with_scales``); ``forward`` and every export are unchanged.

    ``forward(images)``: images ``(B, 3, H, W)`` float in [0, 1], ``H`` and ``W`` multiples of the
    largest stride -> list of ``num_levels`` raw tensors (decode them with ``yolopose.geometry.decode``).
    """

    def __init__(self, variant: str = "s", *, num_keypoints: int = COCO_PERSON_NUM_KEYPOINTS, num_classes: int = 1,
                 num_levels: int = 4, anchors: list[list[list[float]]] | None = None,
                 kpt_head_depth: int = PAPER_KPT_HEAD_DEPTH, act: str = "silu", depth: float | None = None,
                 width: float | None = None,
                 keypoint_prior: list[list[float]] | None = None, kpt_uncertainty: bool = False) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if num_keypoints < 1 or num_classes < 1:
            raise ValueError(f"need num_keypoints >= 1 and num_classes >= 1, got {num_keypoints}, {num_classes}")
        d, w = VARIANTS[variant]
        d, w = depth or d, width or w
        anchors = anchors if anchors is not None else default_anchors(num_levels)
        anchor_t = torch.tensor(anchors, dtype=torch.float32)
        if anchor_t.ndim != 3 or anchor_t.shape[0] != num_levels or anchor_t.shape[2] != 2:
            raise ValueError(f"anchors must be [{num_levels} levels][A][2 (w, h)], got shape {tuple(anchor_t.shape)}")
        if keypoint_prior is not None and tuple(torch.tensor(keypoint_prior).shape) != (num_keypoints, 2):
            raise ValueError(f"keypoint_prior must be [{num_keypoints} keypoints][2], "
                             f"got shape {tuple(torch.tensor(keypoint_prior).shape)}")
        self.variant, self.num_keypoints, self.num_classes = variant, num_keypoints, num_classes
        self.backbone = CSPDarknet(d, w, num_levels, act)
        self.neck = PAN(self.backbone.out_channels, scale_depth(3, d), act)
        self.strides: list[int] = list(self.backbone.strides)
        self.head = PoseHead(self.neck.out_channels, self.strides, num_anchors=anchor_t.shape[1],
                             num_classes=num_classes, num_keypoints=num_keypoints, kpt_head_depth=kpt_head_depth,
                             act=act, anchors=anchor_t,
                             keypoint_prior=None if keypoint_prior is None else torch.tensor(keypoint_prior,
                                                                                             dtype=torch.float32),
                             kpt_uncertainty=kpt_uncertainty)
        self.register_buffer("anchors", anchor_t)  # (L, A, 2) pixels

    @property
    def num_anchors(self) -> int:
        return int(self.anchors.shape[1])

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.head(self.neck(self.backbone(images)))

    def forward_with_scales(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """``forward``'s raw maps and, with ``kpt_uncertainty``, each level's ``(B, A, H, W, K)`` keypoint log-scales
        (else None)."""
        feats = self.neck(self.backbone(images))
        if self.head.kpt_scale is None:
            return self.head(feats), None
        return self.head.forward_with_scales(feats)
