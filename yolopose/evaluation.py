"""COCO evaluation: detections -> COCO result records -> pycocotools keypoint and box AP.

Metric names (as logged): ``kpt_AP, kpt_AP50, kpt_AP75, kpt_APm, kpt_APl, kpt_AR, box_AP, box_AP50``.
Both evaluations run on exactly the records written to ``predictions.json`` (keypoints, score and
bbox per detection), so ``COCO.loadRes('predictions.json')`` + ``COCOeval`` reproduces the numbers.
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from yolopose.postprocess import Detections, undo_letterbox

KPT_STATS = ("kpt_AP", "kpt_AP50", "kpt_AP75", "kpt_APm", "kpt_APl", "kpt_AR")
BOX_STATS = {"box_AP": 0, "box_AP50": 1}


def detections_to_records(det: Detections, meta: dict, category_ids: list[int]) -> list[dict]:
    """COCO result records of one image's detections, mapped back to original pixels.

    Args:
        det: the valid detections of one image (``Detections.image(b)``).
        meta: ``image_id``, ``orig_size (h, w)``, ``scale``, ``pad (x, y)`` of the letterbox.
        category_ids: COCO category id of each class index.
    Returns:
        one dict per detection: ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]`` rounded to 0.01 px,
        ``keypoints`` ``[x, y, c] * K`` rounded to 0.001, ``score`` rounded to 1e-5.

    Rounding is done on whole float64 arrays: the float32 values times 10^d are exact in float64, so
    ``rint`` rounds half to even exactly as Python's ``round(float(v), d)`` does, value for value (about
    10x faster than rounding 3K + 5 Python floats per detection).
    """
    if int(det.num_dets) == 0:
        return []
    boxes, kpts = undo_letterbox(det.boxes.float(), det.keypoints.float(), meta["scale"], meta["pad"],
                                 meta["orig_size"])
    boxes = boxes.cpu().numpy().astype(np.float64)
    xywh = np.concatenate((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), 1)
    kpts = kpts.cpu().numpy().astype(np.float64).reshape(len(boxes), -1)
    scores = det.scores.float().cpu().numpy().astype(np.float64)
    cats = np.asarray(category_ids, dtype=np.int64)[det.labels.cpu().numpy()]
    image_id = int(meta["image_id"])
    return [{"image_id": image_id, "category_id": c, "bbox": b, "keypoints": k, "score": sc}
            for c, b, k, sc in zip(cats.tolist(), np.round(xywh, 2).tolist(), np.round(kpts, 3).tolist(),
                                   np.round(scores, 5).tolist())]


def gather_records(records: list[dict], image_ids: list[int]) -> tuple[list[dict], set[int]]:
    """All ranks' records and evaluated image ids, without the duplicates a padded sampler creates.

    Every rank passes its own records and the ids of the images it evaluated; each image's records
    are kept once (from the first rank that evaluated it). Without a process group it is a no-op.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return records, set(image_ids)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (records, image_ids))
    merged: list[dict] = []
    seen: set[int] = set()
    for rank_records, rank_ids in gathered:
        fresh = set(rank_ids) - seen
        merged.extend(r for r in rank_records if r["image_id"] in fresh)
        seen |= fresh
    return merged, seen


class CocoEvaluator:
    """pycocotools keypoint + box evaluation against a ground-truth COCO dict.

    Args:
        gt: COCO ground truth (``images``, ``annotations`` with ``area``, ``num_keypoints``,
            ``iscrowd``; ``categories``), in original image pixels.
        sigmas: ``(K,)`` OKS sigmas of the dataset.
    """

    def __init__(self, gt: dict, sigmas: list[float] | np.ndarray) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO()
            self.coco.dataset = copy.deepcopy(gt)
            self.coco.createIndex()
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.summary = ""

    def evaluate(self, records: list[dict], image_ids: set[int] | None = None) -> dict[str, float]:
        """Keypoint and box metrics of ``records`` over ``image_ids`` (default: every GT image).

        An empty record list scores 0 (pycocotools' ``loadRes([])`` would raise). The printed
        pycocotools keypoint summary and the two box lines are kept in ``self.summary``.

        ``records`` are not modified (``loadRes`` adds keys to each dict: it gets shallow copies). The box
        evaluation runs on the ``all`` area range only, the one ``box_AP``/``box_AP50`` read: the same
        numbers as a full ``COCOeval`` for a quarter of its per-image work.
        """
        metrics = {name: 0.0 for name in (*KPT_STATS, *BOX_STATS)}
        if not records:
            self.summary = "no detections: every AP is 0"
            return metrics
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            dt = self.coco.loadRes([dict(r) for r in records])
            for iou_type in ("keypoints", "bbox"):
                ev = COCOeval(self.coco, dt, iou_type)
                if iou_type == "keypoints":
                    ev.params.kpt_oks_sigmas = self.sigmas
                else:
                    ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[:1], ev.params.areaRngLbl[:1]
                if image_ids is not None:
                    ev.params.imgIds = sorted(image_ids)
                print(f"--- {iou_type} ---")
                ev.evaluate()
                ev.accumulate()
                if iou_type == "keypoints":
                    ev.summarize()
                    stats = [max(float(s), 0.0) for s in ev.stats]  # -1 means "no GT in range": report 0
                    metrics.update({name: stats[i] for i, name in enumerate(KPT_STATS)})
                else:
                    for name, iou in (("box_AP", None), ("box_AP50", 0.5)):
                        metrics[name] = max(_average_precision(ev, iou), 0.0)
        self.summary = out.getvalue()
        return metrics


def _average_precision(ev: COCOeval, iou_threshold: float | None, max_dets: int = 100) -> float:
    """AP over area ``all`` at ``max_dets`` of an accumulated ``COCOeval``, at one IoU threshold or averaged over
    all: exactly ``COCOeval.summarize``'s formula (``stats[0]`` and ``stats[1]``), printed in its format."""
    p = ev.params
    precision = ev.eval["precision"]                                   # (T, R, K, A, M)
    if iou_threshold is not None:
        precision = precision[np.where(iou_threshold == p.iouThrs)[0]]
    precision = precision[:, :, :, [p.areaRngLbl.index("all")], [p.maxDets.index(max_dets)]]
    value = float(np.mean(precision[precision > -1])) if (precision > -1).any() else -1.0
    iou_text = f"{p.iouThrs[0]:0.2f}:{p.iouThrs[-1]:0.2f}" if iou_threshold is None else f"{iou_threshold:0.2f}"
    print(f" {'Average Precision':<18} {'(AP)'} @[ IoU={iou_text:<9} | area={'all':>6s} | maxDets={max_dets:>3d} ] "
          f"= {value:0.3f}")
    return value


def format_table(metrics: dict[str, float]) -> str:
    """A one-screen table of the metrics, keypoints first."""
    names = [*KPT_STATS, *BOX_STATS]
    head = " | ".join(f"{n:>8}" for n in names)
    vals = " | ".join(f"{metrics.get(n, 0.0):8.4f}" for n in names)
    return f"{head}\n{vals}"

