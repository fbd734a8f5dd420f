"""Shared geometry: box conversions, IoU / CIoU, OKS, and decoding of the raw head output.

Conventions used across yolopose:
- boxes are ``xyxy`` (corners) or ``cxcywh`` (centre + size), always in pixels of the network input
  unless a docstring says "grid units" (pixels / stride);
- keypoints are ``(..., K, 3)`` with ``(x, y, v)``: ``v`` in {0, 1, 2} for labels (0 = not labelled),
  a confidence in [0, 1] for predictions;
- a raw head map for one level is ``(B, A, H, W, 5 + C + 3K)`` ordered ``[tx, ty, tw, th, obj, cls*C, (kx, ky, kc)*K]``.
"""
from __future__ import annotations

import math

import torch

COCO_PERSON_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)
"""COCO's per-keypoint OKS sigmas for the 17-keypoint person category (nose, eyes, ears, shoulders,
elbows, wrists, hips, knees, ankles)."""

COCO_PERSON_NUM_KEYPOINTS = len(COCO_PERSON_SIGMAS)
"""K of COCO's person category: only the default of the bare ``YOLOPose`` network; training takes K from the data."""

UNIFORM_SIGMA = 1.0 / len(COCO_PERSON_SIGMAS) * sum(COCO_PERSON_SIGMAS)
"""Sigma used for every keypoint of a skeleton without published sigmas (the COCO person mean, ~0.066)."""


def default_sigma_list(num_keypoints: int, category_name: str = "person") -> list[float]:
    """The one rule for sigmas a dataset does not configure: COCO's person sigmas for a 17-keypoint
    category named ``person`` (any case, surrounding spaces ignored), else ``UNIFORM_SIGMA`` for each of
    the K keypoints. ``category_name`` defaults to ``person``, the category of the bare network (K = 17)."""
    if num_keypoints == len(COCO_PERSON_SIGMAS) and category_name.strip().lower() == "person":
        return list(COCO_PERSON_SIGMAS)
    return [UNIFORM_SIGMA] * num_keypoints


def default_sigmas(num_keypoints: int, category_name: str = "person") -> torch.Tensor:
    """``default_sigma_list`` as a float32 tensor of shape ``(K,)``."""
    return torch.tensor(default_sigma_list(num_keypoints, category_name), dtype=torch.float32)


# --------------------------------------------------------------------------- boxes
def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` centre/size -> ``(..., 4)`` corners."""
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` corners -> ``(..., 4)`` centre/size."""
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``a (N, 4)`` and ``b (M, 4)`` xyxy boxes -> ``(N, M)``."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def paired_iou(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of matching ``(N, 4)`` cxcywh boxes (row i with row i) -> ``(N,)`` in [0, 1]."""
    p1, p2 = pred[:, :2] - pred[:, 2:] / 2, pred[:, :2] + pred[:, 2:] / 2
    t1, t2 = target[:, :2] - target[:, 2:] / 2, target[:, :2] + target[:, 2:] / 2
    overlap = (torch.minimum(p2, t2) - torch.maximum(p1, t1)).clamp(min=0)
    inter = overlap[:, 0] * overlap[:, 1]
    return inter / (pred[:, 2] * pred[:, 3] + target[:, 2] * target[:, 3] - inter + eps)


def ciou(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of matching ``(N, 4)`` cxcywh boxes -> ``(N,)`` in [-1.5, 1].

    CIoU = IoU - centre_dist^2 / enclosing_diag^2 - alpha * v, with v the aspect-ratio consistency
    term (Zheng et al., 2020). ``eps`` keeps zero-size boxes finite (value and gradient).
    """
    p1, p2 = pred[:, :2] - pred[:, 2:] / 2, pred[:, :2] + pred[:, 2:] / 2
    t1, t2 = target[:, :2] - target[:, 2:] / 2, target[:, :2] + target[:, 2:] / 2
    wp, hp = pred[:, 2], pred[:, 3] + eps
    wt, ht = target[:, 2], target[:, 3] + eps
    overlap = (torch.minimum(p2, t2) - torch.maximum(p1, t1)).clamp(min=0)
    inter = overlap[:, 0] * overlap[:, 1]  # not prod(): its backward checks for zeros on the host
    union = wp * hp + wt * ht - inter + eps
    iou = inter / union
    enclose = torch.maximum(p2, t2) - torch.minimum(p1, t1)
    diag2 = enclose.pow(2).sum(-1) + eps
    centre2 = (pred[:, :2] - target[:, :2]).pow(2).sum(-1)
    v = (4 / math.pi**2) * (torch.atan(wt / ht) - torch.atan(wp / hp)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (centre2 / diag2 + v * alpha)


# --------------------------------------------------------------------------- keypoints
def keypoint_similarity(pred_xy: torch.Tensor, target_xy: torch.Tensor, area: torch.Tensor,
                        sigmas: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Per-keypoint OKS term ``exp(-d^2 / (2 s^2 k^2))`` with ``k = 2 sigma`` (COCO's form).

    Args:
        pred_xy, target_xy: ``(N, K, 2)`` in the same units as ``area``.
        area: ``(N,)`` object scale s^2 (here: box area, same units squared).
        sigmas: ``(K,)``.
    Returns:
        ``(N, K)`` in (0, 1]; 1 exactly at the target.
    """
    d2 = (pred_xy - target_xy).pow(2).sum(-1)
    k2 = (2 * sigmas).pow(2)
    return torch.exp(-d2 / (2 * area[:, None] * k2[None, :] + eps))


# --------------------------------------------------------------------------- decoding
def decode_box_xy(t: torch.Tensor) -> torch.Tensor:
    """Box centre offset within its cell, in grid units: ``2 sigmoid(t) - 0.5`` (range -0.5..1.5)."""
    return t.sigmoid() * 2 - 0.5


def decode_box_wh(t: torch.Tensor, anchor_wh: torch.Tensor) -> torch.Tensor:
    """Box size ``(2 sigmoid(t))^2 * anchor`` (range 0..4 anchors), in the anchor's units."""
    return (t.sigmoid() * 2).pow(2) * anchor_wh


def decode_keypoint_xy(t: torch.Tensor) -> torch.Tensor:
    """Keypoint offset from its cell, in grid units: ``2 t - 0.5`` (linear, unbounded: points may leave the box)."""
    return t * 2 - 0.5


def make_grid(h: int, w: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Cell indices ``(h, w, 2)`` holding ``(x, y)``."""
    ys = torch.arange(h, device=device, dtype=dtype)
    xs = torch.arange(w, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1)


def decode_level(raw: torch.Tensor, anchors: torch.Tensor, stride: float, num_classes: int) -> torch.Tensor:
    """Decode one level of raw head output into input-pixel predictions.

    Args:
        raw: ``(B, A, H, W, 5 + C + 3K)`` raw head output.
        anchors: ``(A, 2)`` anchor width/height in input pixels.
        stride: the level's stride in pixels.
        num_classes: C.
    Returns:
        ``(B, A*H*W, 4 + 1 + C + 3K)``: box xyxy (pixels), objectness prob, class probs,
        then K x (x, y, confidence) with x, y in pixels and confidence a probability.

    Computed in float32 at least, whatever the dtype of ``raw`` (an fp16/bf16 map from autocast or a half
    model is cast first): in bf16 a 640 px coordinate keeps 4 px steps, in fp16 a box area over 65 504 px^2
    overflows. The output is float32 (float64 for a float64 map).
    """
    raw = raw.to(torch.promote_types(raw.dtype, torch.float32))
    b, a, h, w, d = raw.shape
    k = (d - 5 - num_classes) // 3
    grid = make_grid(h, w, raw.device, raw.dtype)[None, None]          # (1, 1, H, W, 2)
    xy = (decode_box_xy(raw[..., 0:2]) + grid) * stride
    wh = decode_box_wh(raw[..., 2:4], anchors.to(raw.dtype).view(1, a, 1, 1, 2))
    scores = raw[..., 4:5 + num_classes].sigmoid()
    kpt = raw[..., 5 + num_classes:].reshape(b, a, h, w, k, 3)
    kxy = (decode_keypoint_xy(kpt[..., :2]) + grid[..., None, :]) * stride
    kconf = kpt[..., 2:3].sigmoid()
    out = torch.cat((cxcywh_to_xyxy(torch.cat((xy, wh), -1)), scores,
                     torch.cat((kxy, kconf), -1).reshape(b, a, h, w, 3 * k)), dim=-1)
    return out.reshape(b, a * h * w, d)


def decode(raws: list[torch.Tensor], anchors: torch.Tensor, strides: list[float] | torch.Tensor,
           num_classes: int) -> torch.Tensor:
    """Decode every level (see ``decode_level``) and concatenate along the prediction axis.

    Args:
        raws: one ``(B, A, H_l, W_l, 5 + C + 3K)`` tensor per level.
        anchors: ``(L, A, 2)`` in input pixels.
        strides: ``L`` strides.
    Returns:
        ``(B, N, 4 + 1 + C + 3K)`` with ``N = sum_l A*H_l*W_l``.
    """
    return torch.cat([decode_level(r, anchors[i], float(strides[i]), num_classes) for i, r in enumerate(raws)], 1)
