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

NMS_BLOCK = 256
"""Candidates ``nms`` resolves per step (see there)."""


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
        max_keep: int | None = None) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``(N, 4)`` xyxy.
        scores: ``(N,)``.
        iou_threshold: a box is suppressed by a higher-scoring kept box when their IoU is ``> iou_threshold``.
        max_keep: stop once this many boxes are kept (the result is then the first ``max_keep`` of the
            full result); ``None`` keeps going.
    Returns:
        ``(M,)`` long indices of the kept boxes, by decreasing score (ties: lower index first).

    The IoUs are ``geometry.box_iou``'s, in float32 (float64 for float64 boxes), whatever the dtype of ``boxes``.

    A block of the ``NMS_BLOCK`` best remaining boxes at a time, on the tensors' device: the boxes kept so far (at
    most ``max_keep``) remove what they overlap in the block in one step, the block's own overlaps come as one
    ``(n, n)`` matrix, and only the greedy pass over that small boolean matrix runs on the host. No box is compared
    with boxes past its block, so the work follows the boxes examined: a fresh model at validation's threshold (every
    anchor a candidate, tens of thousands at 640 px) fills ``max_keep`` within the first blocks and stops there,
    where the former pass filtered every remaining candidate after each block of 64 (2x slower on such a model).
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    if order.numel() == 0:
        return order
    b = boxes[order].detach()
    # float32 at least: in fp16 an area above 65 504 px^2 is inf and every IoU with it 0 (nothing suppressed)
    b = b if b.dtype == torch.float64 else b.float()
    limit = len(b) if max_keep is None else max_keep
    kept: list[torch.Tensor] = []
    n_kept = 0
    for start in range(0, len(b), NMS_BLOCK):
        block = b[start:start + NMS_BLOCK]
        over = box_iou(block, block) > iou_threshold
        if n_kept:
            alive = ~(box_iou(b[torch.cat(kept)], block) > iou_threshold).any(0)
        else:
            alive = torch.ones(len(block), dtype=torch.bool, device=b.device)
        mine = _greedy(over.cpu().numpy(), alive.cpu().numpy(), limit - n_kept)
        kept.append(start + torch.as_tensor(mine, dtype=torch.long, device=b.device))
        n_kept += len(mine)
        if n_kept >= limit:
            break
    return order[torch.cat(kept)]


def _greedy(over: np.ndarray, alive: np.ndarray, limit: int) -> np.ndarray:
    """Indices kept by the greedy pass over one block (at most ``limit``): ``over (n, n)`` bool pairwise overlaps,
    ``alive (n,)`` the boxes no earlier block's kept box suppresses."""
    alive = alive.copy()
    out = []
    for j in range(len(alive)):
        if alive[j]:
            out.append(j)
            if len(out) == limit:
                break
            alive[j + 1:] &= ~over[j, j + 1:]
    return np.asarray(out, dtype=np.int64)


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
            kept = cand[nms(boxes[bi, cand], scores[bi, ci, cand], iou_threshold, max_per_class)]
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

    def to(self, device: torch.device | str) -> "Detections":
        """The same detections on ``device`` (one copy per field, e.g. to read them on the host)."""
        return Detections(*(t.to(device) for t in (self.num_dets, self.boxes, self.scores, self.labels,
                                                    self.keypoints)))

    def image(self, b: int) -> "Detections":
        """The valid detections of image ``b`` (leading dim 1 removed, trailing padding cut)."""
        n = int(self.num_dets[b])
        return Detections(self.num_dets[b], self.boxes[b, :n], self.scores[b, :n], self.labels[b, :n],
                          self.keypoints[b, :n])


def tracing() -> bool:
    """True while an exporter traces the code (ONNX, TorchScript, ``torch.export``/dynamo): then
    ``select_detections`` builds only static-shaped, scatter-free ops; eager runs index instead (same results)."""
    return (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_exporting()
            or torch.compiler.is_compiling())


def select_detections(decoded: torch.Tensor, num_classes: int, conf_threshold: float = 0.001,
                      iou_threshold: float = 0.65, max_det: int = 300, top_k: int = 1000) -> Detections:
    """Confidence filter, top-k pre-limit, class-aware NMS and the ``max_det`` best per image.

    Uses only ops with static output shapes besides the NMS itself (TopK with constant k, Gather,
    comparisons, MatMul: no scatter), so the same code exports to ONNX/TensorRT. Run eagerly (``tracing()``
    False) it marks the kept candidates by indexing instead of the one-hot MatMul (the same detections): with
    validation's ``top_k`` of 30 000 the one-hot rows were most of the cost. Only the candidates' boxes are
    gathered before NMS, the full rows of the ``max_det`` survivors after it.

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
    k = min(top_k, n)
    static = tracing()
    # With one class the class logit is never trained (no class loss): the score is objectness alone.
    if c == 1:
        score = decoded[..., 4]                                                # (B, N)
    else:
        score, label = (decoded[..., 5:5 + c] * decoded[..., 4:5]).max(-1)     # (B, N)
    best, idx = score.topk(k, dim=1)                                           # (B, k)
    # (B, k, 4) boxes of the candidates (full rows come at the end). A flat Gather, not GatherElements on the
    # full rows with 4-wide indices: exporters drop the slice, and OpenVINO rejects indices narrower than data.
    flat_rows = (idx + torch.arange(bsz, device=decoded.device)[:, None] * n).reshape(-1)
    cand_boxes = decoded[..., :4].reshape(bsz * n, 4).index_select(0, flat_rows).reshape(bsz, k, 4)
    # One score row per class, zero outside each box's own class: class-aware NMS, one label per box.
    if c == 1:
        per_class = best[:, None, :]                                           # (B, 1, k)
    else:
        label = label.gather(1, idx)
        per_class = best[:, None, :] * (label[:, None, :] == torch.arange(c, device=decoded.device)[None, :, None])
    sel = nms_op(cand_boxes.contiguous(), per_class.contiguous(), max_det, iou_threshold, conf_threshold)
    flat = sel[:, 1] * k + sel[:, 2]
    if static:
        # Kept mask (B, C*k) from the selected rows without scatter: one-hot rows, reduced by a matmul.
        onehot_pos = (flat[:, None] == torch.arange(c * k, device=decoded.device)[None, :]).to(decoded.dtype)
        onehot_img = (sel[:, 0:1] == torch.arange(bsz, device=decoded.device)[None, :]).to(decoded.dtype)
        kept = onehot_img.transpose(0, 1) @ onehot_pos                         # (B, C*k)
    else:
        kept = decoded.new_zeros((bsz, c * k))
        kept[sel[:, 0], flat] = 1.0
    masked = per_class.reshape(bsz, c * k) * (kept > 0).to(decoded.dtype)
    d = min(max_det, c * k)
    top, pos = masked.topk(d, dim=1)                                           # (B, d)
    valid = (top > 0).to(decoded.dtype)
    box_idx = pos % k
    rows = idx.gather(1, box_idx)                                              # (B, d) rows of ``decoded``
    det = decoded.gather(1, rows[..., None].expand(bsz, d, dim)) * valid[..., None]
    out = Detections(
        # counted in floating point: TensorRT's ReduceSum takes no integer input
        num_dets=valid.sum(1).to(torch.int64),
        boxes=det[..., :4],
        scores=top * valid,
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
