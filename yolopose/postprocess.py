"""Post-processing: NMS (pure torch, exportable), detection selection, undoing the letterbox.

Decoding is box NMS only: each keypoint set rides along with its box. ``select_detections`` is used
by validation, ``predict.py`` and the exported ONNX graph alike; its NMS is the custom op
``yolopose::nms`` whose semantics are those of the standard ONNX ``NonMaxSuppression`` operator, so an
exporter can map it to that op one to one (``yolopose.export``), while eager PyTorch runs the
pure-torch greedy NMS below.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from yolopose.geometry import box_iou


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``(N, 4)`` xyxy.
        scores: ``(N,)``.
        iou_threshold: a box is suppressed by a higher-scoring kept box when their IoU is ``> iou_threshold``.
    Returns:
        ``(M,)`` long indices of the kept boxes, by decreasing score (ties: lower index first).
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    # over[i, j]: box i (higher score) would suppress box j. One greedy pass over the rows on the
    # host: O(N) cheap numpy steps once the O(N^2) overlap test is done in one tensor op.
    over = torch.triu(box_iou(b, b) > iou_threshold, diagonal=1).cpu().numpy()
    keep = np.ones(len(b), dtype=bool)
    for i in range(len(b)):
        if keep[i]:
            keep &= ~over[i]
    return order[torch.from_numpy(keep).to(order.device)]


@torch.library.custom_op("yolopose::nms", mutates_args=())
def nms_op(boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou_threshold: float,
           score_threshold: float) -> torch.Tensor:
    """ONNX ``NonMaxSuppression`` semantics (``center_point_box = 0``).

    Args:
        boxes: ``(B, N, 4)`` corner boxes.
        scores: ``(B, C, N)``.
        max_per_class: at most this many boxes kept per (image, class).
        iou_threshold: suppress when IoU ``> iou_threshold``.
        score_threshold: only boxes with score ``> score_threshold`` are considered.
    Returns:
        ``(S, 3)`` int64 rows ``[batch, class, box]``, grouped by image then class, by decreasing score.
    """
    rows = []
    for bi in range(boxes.shape[0]):
        for ci in range(scores.shape[1]):
            cand = (scores[bi, ci] > score_threshold).nonzero().squeeze(1)
            kept = cand[nms(boxes[bi, cand], scores[bi, ci, cand], iou_threshold)][:max_per_class]
            rows.append(torch.stack((torch.full_like(kept, bi), torch.full_like(kept, ci), kept), 1))
    if not rows:
        return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
    return torch.cat(rows).to(torch.int64)


@nms_op.register_fake
def _nms_op_fake(boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou_threshold: float,
                 score_threshold: float) -> torch.Tensor:
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n, 3), dtype=torch.int64)


@dataclass
class Detections:
    """Static-shaped detections of a batch (``D = max_det``); rows past ``num_dets[b]`` are zeros.

    Attributes:
        num_dets: ``(B,)`` int64.
        boxes: ``(B, D, 4)`` xyxy input pixels.
        scores: ``(B, D)`` objectness x class probability.
        labels: ``(B, D)`` int64 class index.
        keypoints: ``(B, D, K, 3)`` (x, y, confidence), input pixels.
    """

    num_dets: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    keypoints: torch.Tensor

    def image(self, b: int) -> "Detections":
        """The valid detections of image ``b`` (leading dim 1 removed, trailing padding cut)."""
        n = int(self.num_dets[b])
        return Detections(self.num_dets[b], self.boxes[b, :n], self.scores[b, :n], self.labels[b, :n],
                          self.keypoints[b, :n])


def select_detections(decoded: torch.Tensor, num_classes: int, conf_threshold: float = 0.001,
                      iou_threshold: float = 0.65, max_det: int = 300, top_k: int = 1000) -> Detections:
    """Confidence filter, top-k pre-limit, class-aware NMS and the ``max_det`` best per image.

    Uses only ops with static output shapes besides the NMS itself (TopK with constant k, Gather,
    comparisons, MatMul: no scatter), so the same code exports to ONNX/TensorRT.

    Args:
        decoded: ``(B, N, 4 + 1 + C + 3K)`` from ``yolopose.geometry.decode``.
        num_classes: C.
        conf_threshold: minimum objectness x class probability.
        iou_threshold: NMS IoU threshold.
        max_det: detections kept per image.
        top_k: candidates per image entering NMS (the best ``top_k`` by score).
    """
    bsz, n, dim = decoded.shape
    c = num_classes
    k_kpt = (dim - 5 - c) // 3
    # With one class the class logit is never trained (no class loss): the score is objectness alone.
    obj = decoded[..., 4:5]
    cls_scores = obj if c == 1 else decoded[..., 5:5 + c] * obj                # (B, N, C)
    best, label = cls_scores.max(-1)                                           # (B, N)
    k = min(top_k, n)
    best, idx = best.topk(k, dim=1)                                            # (B, k)
    cand = decoded.gather(1, idx[..., None].expand(-1, -1, dim))               # (B, k, dim)
    label = label.gather(1, idx)
    # One score row per class, zero outside each box's own class: class-aware NMS, one label per box.
    per_class = best[:, None, :] * (label[:, None, :] == torch.arange(c, device=decoded.device)[None, :, None])
    sel = nms_op(cand[..., :4].contiguous(), per_class.contiguous(), max_det, iou_threshold, conf_threshold)
    # Kept mask (B, C*k) from the selected rows without scatter: one-hot rows, reduced by a matmul.
    flat = sel[:, 1] * k + sel[:, 2]
    onehot_pos = (flat[:, None] == torch.arange(c * k, device=decoded.device)[None, :]).to(decoded.dtype)
    onehot_img = (sel[:, 0:1] == torch.arange(bsz, device=decoded.device)[None, :]).to(decoded.dtype)
    kept = onehot_img.transpose(0, 1) @ onehot_pos                             # (B, C*k)
    masked = per_class.reshape(bsz, c * k) * (kept > 0).to(decoded.dtype)
    d = min(max_det, c * k)
    top, pos = masked.topk(d, dim=1)                                           # (B, d)
    valid = top > 0
    box_idx = pos % k
    det = cand.gather(1, box_idx[..., None].expand(-1, -1, dim)) * valid[..., None].to(decoded.dtype)
    out = Detections(
        num_dets=valid.sum(1),
        boxes=det[..., :4],
        scores=top * valid.to(top.dtype),
        labels=(pos // k) * valid.to(pos.dtype),
        keypoints=det[..., 5 + c:].reshape(bsz, d, k_kpt, 3),
    )
    if d < max_det:  # fewer candidates than max_det: pad to the promised static size
        pad = max_det - d
        out = Detections(out.num_dets, torch.nn.functional.pad(out.boxes, (0, 0, 0, pad)),
                         torch.nn.functional.pad(out.scores, (0, pad)),
                         torch.nn.functional.pad(out.labels, (0, pad)),
                         torch.nn.functional.pad(out.keypoints, (0, 0, 0, 0, 0, pad)))
    return out


def undo_letterbox(boxes: torch.Tensor, keypoints: torch.Tensor, scale: float, pad: tuple[float, float],
                   orig_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Map one image's detections from input pixels back to original pixels.

    Args:
        boxes: ``(D, 4)`` xyxy in input pixels.
        keypoints: ``(D, K, 3)``; only x, y are mapped.
        scale, pad: the letterbox transform, ``input = original * scale + pad``.
        orig_size: ``(h, w)`` of the original image; boxes are clipped to it.
    Returns:
        new ``(boxes, keypoints)`` tensors.
    """
    px, py = pad
    offset = boxes.new_tensor([px, py, px, py])
    b = (boxes - offset) / scale
    h, w = orig_size
    b = torch.stack((b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)), 1)
    kp = keypoints.clone()
    kp[..., 0] = (kp[..., 0] - px) / scale
    kp[..., 1] = (kp[..., 1] - py) / scale
    return b, kp
