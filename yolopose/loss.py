"""PoseLoss: box (CIoU), objectness, class, keypoint (OKS or L1) and keypoint-confidence terms.

Two reductions (``reduction``):

- ``pooled`` (the default, and the demo's): each term is averaged over ALL positives of all levels, with
  no hidden per-level or per-class rescaling. The default weights below were tuned on the CPU demo.
- ``per_level``: the reference's (TI edgeai-yolov5 yolo-pose, the paper's code): each term is averaged
  over one level's positives and the level means are summed, so a level with few positives (P6) weighs as
  much as one with many. The COCO configs use it with the reference's gains and its OKS normaliser
  (``kpt_normaliser: reference``, ``4 sigma^2 A`` instead of COCO's ``8 sigma^2 A``): their per-term
  gradients then equal the reference's (``tests/test_loss_weighting.py``; docs/scaling.md).

Default weights (pooled reduction):

=============  =======  =======================================================================
term           weight   what
=============  =======  =======================================================================
box            0.10     1 - CIoU in [0, 2]. The reference's gain is 0.05 * 3/nl = 0.0375 on a sum of
                        per-level means (all 4 levels carry positives with the P3-P6 anchors).
objectness     1.00     BCE averaged over every anchor of a level, times the level's balance
                        weight (P3..P6: 4, 1, 0.25, 0.06) and times input area / 640^2, so the
                        gradient per positive stays constant when the input size changes. The
                        reference's gain is 1.0 * 3/nl = 0.75 times the same area factor.
class          0.50     BCE, only computed when C > 1.
keypoints      0.30     1 - OKS in [0, 1] with COCO's normaliser 8 sigma^2 A; the reference uses 0.1
                        on a sum of per-level means with 4 sigma^2 A (a sharper kernel).
keypoint conf  0.05     BCE; the reference's gain is its class gain 0.5 * C/80 * 3/nl = 0.0047.
                        It is not used by OKS AP, only to decide which keypoints to draw.
keypoint L1    0.00     optional helper: L1 distance divided by the object scale sqrt(area). OKS
                        saturates: a keypoint more than ~3 s*k away gets almost no gradient, and
                        in short runs about a quarter of the limbs sit there. A small weight keeps
                        pulling them in; it is off by default (the paper's loss is OKS alone).
keypoint NLL   0.00     optional, beside OKS: the negative log-likelihood of the keypoint under a
                        Laplace distribution whose scale the head predicts per keypoint (``kpt_scale``),
                        in units of COCO's ``s * 2 sigma``: ``2 log b + (|dx| + |dy|) / b`` (RLE without
                        the flow, as RTMO / YOLO26 credit likelihood losses). Its pull does not fade
                        with distance as OKS's does, and it weighs each keypoint by its predicted
                        certainty. Needs the scale maps (``forward(..., scales=...)``).
=============  =======  =======================================================================

Measured against the reference formula on the same maps (docs/scaling.md), the pooled defaults give
0.3-0.6x the reference's box gradient, 1.33x its objectness, 0.16-0.52x its keypoint and 1.35-1.95x its
keypoint-confidence gradient, and the ratios change between initialisation and convergence (the pooled
and per-level means weigh the levels differently), so no choice of gains alone matches it.

The total is multiplied by the batch size (as YOLOv5 does); ``PoseModule`` further multiplies it by the
number of batches one optimiser step combines (DDP ranks x accumulation), so the gradient is that of the
mean loss times the images of the step and ``lr`` is the step size of a nominal 64-image batch.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from yolopose.assigner import AnchorAssigner, Positives, gather_positive_rows
from yolopose.geometry import ciou, decode_box_wh, decode_box_xy, decode_keypoint_xy, keypoint_similarity

BALANCE: dict[int, tuple[float, ...]] = {3: (4.0, 1.0, 0.4), 4: (4.0, 1.0, 0.25, 0.06), 5: (4.0, 1.0, 0.25, 0.06, 0.02)}
"""Objectness weight per level (finest first), YOLOv5's figures: fine levels see many easy negatives."""


class PoseLoss(nn.Module):
    """Training loss of the anchor pose head.

    Every argument is keyword-only: two swapped weights must be an error, not a silently different loss.

    Args:
        num_keypoints: K.
        num_classes: C.
        assigner: matches targets to the model's anchors and cells (``AnchorAssigner(anchors, strides,
            anchor_t)``); its ``strides`` are the levels' strides.
        sigmas: ``(K,)`` OKS sigmas of the dataset (see ``yolopose.geometry.default_sigmas``).
        kpt_loss: ``"oks"`` (1 - OKS, the paper's) or ``"l1"`` (L1 distance in grid units, for the ablation).
        box_weight, obj_weight, cls_weight, kpt_weight, kpt_conf_weight, kpt_l1_weight, kpt_nll_weight: see the
            module docstring.
        reduction: ``pooled`` (each term's mean over all levels' positives) or ``per_level`` (the reference's:
            the mean over each level's positives, summed over the levels).
        kpt_normaliser: the OKS term's ``exp(-d^2 / N)``: ``coco`` ``N = 8 sigma^2 A`` (pycocotools' OKS) or
            ``reference`` ``N = 4 sigma^2 A`` (TI edgeai-yolov5's loss).
        balance: objectness weight per level; defaults to ``BALANCE[L]``.
        eps: added to the number of labelled keypoints of an instance before dividing.
    """

    def __init__(self, *, num_keypoints: int, num_classes: int, assigner: AnchorAssigner, sigmas: torch.Tensor,
                 kpt_loss: Literal["oks", "l1"] = "oks", box_weight: float = 0.10, obj_weight: float = 1.0,
                 cls_weight: float = 0.5, kpt_weight: float = 0.30, kpt_conf_weight: float = 0.05,
                 kpt_l1_weight: float = 0.0, kpt_nll_weight: float = 0.0,
                 reduction: Literal["pooled", "per_level"] = "pooled",
                 kpt_normaliser: Literal["coco", "reference"] = "coco", balance: list[float] | None = None,
                 eps: float = 1e-6) -> None:
        super().__init__()
        if kpt_loss not in ("oks", "l1"):
            raise ValueError(f"kpt_loss must be 'oks' or 'l1', got {kpt_loss!r}")
        if reduction not in ("pooled", "per_level") or kpt_normaliser not in ("coco", "reference"):
            raise ValueError(f"reduction must be 'pooled' or 'per_level' and kpt_normaliser 'coco' or 'reference', "
                             f"got {reduction!r}, {kpt_normaliser!r}")
        self.reduction, self.kpt_normaliser = reduction, kpt_normaliser
        if len(sigmas) != num_keypoints:
            raise ValueError(f"got {len(sigmas)} sigmas for {num_keypoints} keypoints")
        self.num_keypoints, self.num_classes, self.kpt_loss = num_keypoints, num_classes, kpt_loss
        self.weights = {"box": box_weight, "obj": obj_weight, "cls": cls_weight, "kpt": kpt_weight,
                        "kpt_conf": kpt_conf_weight, "kpt_l1": kpt_l1_weight, "kpt_nll": kpt_nll_weight}
        self.balance = list(balance) if balance is not None else list(BALANCE[len(assigner.strides)])
        self.eps = eps
        self.register_buffer("sigmas", torch.as_tensor(sigmas, dtype=torch.float32), persistent=False)
        self.assigner = assigner
        self.strides = list(assigner.strides)

    def forward(self, raws: list[torch.Tensor], targets: torch.Tensor, ignore: torch.Tensor | None = None,
                scales: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute the loss.

        Args:
            raws: the model output, one ``(B, A, H_l, W_l, 5 + C + 3K)`` tensor per level.
            targets: ``(T, 6 + 3K)`` rows ``[batch, cls, cx, cy, w, h, (x, y, v) * K]`` in input pixels.
            ignore: optional ``(M, 5)`` rows ``[batch, x1, y1, x2, y2]``: crowd regions where unmatched
                anchors get no objectness loss.
            scales: the head's keypoint log-scales, one ``(B, A, H_l, W_l, K)`` map per level
                (``YOLOPose.forward_with_scales``); without them the NLL part is 0.
        Returns:
            ``(total, parts)``: the weighted sum times the batch size (a scalar with grad), and the
            detached unweighted parts ``box, obj, cls, kpt, kpt_conf, kpt_l1, kpt_nll``.

        Computed in float32 at least, whatever the precision of ``raws`` (under fp16/bf16 autocast a
        640 px coordinate would otherwise keep only 0.5 px / 4 px steps); only the gathered positives and
        the objectness logits are cast, never the whole maps. All levels' positives are handled in one set
        of tensors: the forward synchronises with the host once (the assigner's ``nonzero``), where the
        per-level version did eight times.
        """
        batch = raws[0].shape[0]
        dtype = torch.promote_types(raws[0].dtype, torch.float32)
        targets = targets.to(dtype)
        pos = self.assigner.assign(targets, [(r.shape[2], r.shape[3]) for r in raws], raws)
        tobjs, parts = self._positive_terms(raws, pos, dtype, scales)
        obj = raws[0].new_zeros((), dtype=dtype)
        in_h, in_w = raws[0].shape[2] * self.strides[0], raws[0].shape[3] * self.strides[0]
        for lvl, (raw, tobj) in enumerate(zip(raws, tobjs)):
            weight = self._objectness_weight(raw, lvl, ignore, tobj)
            obj = obj + self.balance[lvl] * F.binary_cross_entropy_with_logits(raw[..., 4].to(dtype), tobj, weight)
        parts["obj"] = obj * (in_h * in_w) / 640.0**2
        parts = {name: parts[name] for name in ("box", "obj", "cls", "kpt", "kpt_conf", "kpt_l1", "kpt_nll")}
        total = sum(self.weights[name] * value for name, value in parts.items()) * batch
        return total, {name: value.detach() for name, value in parts.items()}

    def _positive_terms(self, raws: list[torch.Tensor], pos: Positives, dtype: torch.dtype,
                        scales: list[torch.Tensor] | None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Box, class and keypoint terms of all positives; the objectness target ``(B, A, H, W)`` of each level.

        Returns:
            ``(tobjs, parts)``: one objectness target per level (the detached CIoU of the positives in a
            cell, the best one when several share it, else 0) and the ``box, cls, kpt, kpt_conf, kpt_l1, kpt_nll``
            parts.
        """
        c, k = self.num_classes, self.num_keypoints
        device = raws[0].device
        shapes = [r.shape[:4] for r in raws]
        sizes = [s[0] * s[1] * s[2] * s[3] for s in shapes]
        tobj_flat = torch.zeros(sum(sizes), device=device, dtype=dtype)
        tobjs = [t.view(s) for t, s in zip(tobj_flat.split(sizes), shapes)]
        zero = tobj_flat.new_zeros(())
        n_pos = pos.batch.shape[0]
        if n_pos == 0:
            return tobjs, {"box": zero, "cls": zero, "kpt": zero, "kpt_conf": zero, "kpt_l1": zero, "kpt_nll": zero}
        pred = gather_positive_rows(raws, pos).to(dtype)                       # (P, 5 + C + 3K)
        nll = zero if scales is None else self._nll_term(gather_positive_rows(scales, pos).to(dtype), pred, pos,
                                                         len(raws))   # (the rows gathered once, for every term)
        pbox = torch.cat((decode_box_xy(pred[:, :2]), decode_box_wh(pred[:, 2:4], pos.anchor_wh)), 1)
        iou = ciou(pbox, pos.box)
        # Objectness target: the detached IoU; when several targets share an anchor the best one wins.
        cell, _ = self.assigner.anchor_index(pos, raws)
        tobj_flat.scatter_reduce_(0, cell, iou.detach().clamp(min=0), "amax")
        if self.reduction == "per_level":
            return tobjs, {**self._per_level_terms(pred, pos, iou, len(raws)), "kpt_nll": nll}
        parts = {"box": (1 - iou).sum() / n_pos, "cls": zero, "kpt_nll": nll}
        if c > 1:
            onehot = (pos.cls[:, None] == torch.arange(c, device=device)).to(dtype)
            parts["cls"] = F.binary_cross_entropy_with_logits(pred[:, 5:5 + c], onehot, reduction="sum") / c / n_pos
        pk = pred[:, 5 + c:].reshape(-1, k, 3)
        labelled = (pos.keypoints[..., 2] > 0).to(dtype)                      # (P, K)
        pxy, txy = decode_keypoint_xy(pk[..., :2]), pos.keypoints[..., :2]
        area = pos.box[:, 2] * pos.box[:, 3]
        l1 = (pxy - txy).abs().sum(-1)                                        # (P, K) grid units
        per_kpt = 1 - self._similarity(pxy, txy, area) if self.kpt_loss == "oks" else l1
        n_lab = labelled.sum(1)
        n_inst = (n_lab > 0).sum().clamp(min=1)
        parts["kpt"] = ((per_kpt * labelled).sum(1) / (n_lab + self.eps)).sum() / n_inst
        scaled_l1 = l1 / (area.sqrt()[:, None] + self.eps)
        parts["kpt_l1"] = ((scaled_l1 * labelled).sum(1) / (n_lab + self.eps)).sum() / n_inst
        parts["kpt_conf"] = F.binary_cross_entropy_with_logits(pk[..., 2], labelled, reduction="sum") / labelled.numel()
        return tobjs, parts

    def _nll_term(self, log_b: torch.Tensor, pred: torch.Tensor, pos: Positives, num_levels: int) -> torch.Tensor:
        """The keypoint NLL (module docstring) of the positives' log-scales ``(P, K)`` and raw rows ``pred``,
        averaged like the ``kpt`` term."""
        k, c, dtype = self.num_keypoints, self.num_classes, pred.dtype
        log_b = log_b.clamp(-6.0, 6.0)
        pxy = decode_keypoint_xy(pred[:, 5 + c:].reshape(-1, k, 3)[..., :2])
        txy = pos.keypoints[..., :2]
        unit = (pos.box[:, 2] * pos.box[:, 3]).sqrt()[:, None] * (2 * self.sigmas.to(dtype))[None]   # (P, K)
        residual = (pxy - txy).abs().sum(-1) / (unit + self.eps)
        nll = 2 * log_b + residual * torch.exp(-log_b)
        labelled = (pos.keypoints[..., 2] > 0).to(dtype)
        n_lab = labelled.sum(1)
        if self.reduction == "per_level":
            lab_share = 1 / pred.new_zeros(num_levels).index_add_(0, pos.level, n_lab).clamp(min=1)
            return ((nll * labelled).sum(1) * lab_share[pos.level]).sum()
        n_inst = (n_lab > 0).sum().clamp(min=1)
        return ((nll * labelled).sum(1) / (n_lab + self.eps)).sum() / n_inst

    def _similarity(self, pxy: torch.Tensor, txy: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
        """``(P, K)`` OKS term; the ``reference`` normaliser ``4 sigma^2 A`` is COCO's ``8 sigma^2 A`` at half A."""
        return keypoint_similarity(pxy, txy, area if self.kpt_normaliser == "coco" else area / 2, self.sigmas)

    def _per_level_terms(self, pred: torch.Tensor, pos: Positives, iou: torch.Tensor,
                         num_levels: int) -> dict[str, torch.Tensor]:
        """The reference's reduction: each term's mean over one level's positives (keypoint terms: over its
        labelled keypoints), summed over the levels. ``pred (P, 5 + C + 3K)``, ``iou (P,)``."""
        c, k = self.num_classes, self.num_keypoints
        dtype = pred.dtype

        def level_sum(values: torch.Tensor) -> torch.Tensor:
            """``(L,)`` sums of ``values (P,)`` over each level's positives."""
            return values.new_zeros(num_levels).index_add_(0, pos.level, values)

        share = 1 / level_sum(torch.ones_like(iou)).clamp(min=1)[pos.level]   # (P,) 1 / positives of the level
        parts = {"box": ((1 - iou) * share).sum(), "cls": pred.new_zeros(())}
        if c > 1:
            onehot = (pos.cls[:, None] == torch.arange(c, device=pred.device)).to(dtype)
            bce = F.binary_cross_entropy_with_logits(pred[:, 5:5 + c], onehot, reduction="none").mean(1)
            parts["cls"] = (bce * share).sum()
        pk = pred[:, 5 + c:].reshape(-1, k, 3)
        labelled = (pos.keypoints[..., 2] > 0).to(dtype)                      # (P, K)
        pxy, txy = decode_keypoint_xy(pk[..., :2]), pos.keypoints[..., :2]
        area = pos.box[:, 2] * pos.box[:, 3]
        l1 = (pxy - txy).abs().sum(-1)
        per_kpt = 1 - self._similarity(pxy, txy, area) if self.kpt_loss == "oks" else l1
        lab_share = 1 / level_sum(labelled.sum(1)).clamp(min=1)[pos.level]     # 1 / labelled keypoints of the level
        parts["kpt"] = ((per_kpt * labelled).sum(1) * lab_share).sum()
        scaled_l1 = l1 / (area.sqrt()[:, None] + self.eps)
        parts["kpt_l1"] = ((scaled_l1 * labelled).sum(1) * lab_share).sum()
        conf = F.binary_cross_entropy_with_logits(pk[..., 2], labelled, reduction="none").mean(1)
        parts["kpt_conf"] = (conf * share).sum()
        return parts

    def _objectness_weight(self, raw: torch.Tensor, lvl: int, ignore: torch.Tensor | None,
                           tobj: torch.Tensor) -> torch.Tensor | None:
        """``(B, A, H, W)`` weights: 0 for negatives whose cell centre lies in a crowd region, else 1."""
        if ignore is None or ignore.numel() == 0:
            return None
        b, _, h, w = raw.shape[:4]
        s = float(self.strides[lvl])
        dtype = tobj.dtype
        cx = (torch.arange(w, device=raw.device, dtype=dtype) + 0.5) * s
        cy = (torch.arange(h, device=raw.device, dtype=dtype) + 0.5) * s
        ign = ignore.to(dtype)
        in_x = (cx[None] >= ign[:, 1:2]) & (cx[None] <= ign[:, 3:4])          # (M, W)
        in_y = (cy[None] >= ign[:, 2:3]) & (cy[None] <= ign[:, 4:5])          # (M, H)
        inside = (in_y[:, :, None] & in_x[:, None, :]).reshape(len(ign), -1).to(dtype)
        covered = torch.zeros(b, h * w, device=raw.device, dtype=dtype)
        covered.index_add_(0, ign[:, 0].long(), inside)
        covered = covered.view(b, 1, h, w) > 0
        return (~(covered & (tobj == 0))).to(dtype)
