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
    """
    if int(det.num_dets) == 0:
        return []
    boxes, kpts = undo_letterbox(det.boxes.float(), det.keypoints.float(), meta["scale"], meta["pad"],
                                 meta["orig_size"])
    boxes, kpts = boxes.cpu().numpy(), kpts.cpu().numpy()
    scores, labels = det.scores.float().cpu().numpy(), det.labels.cpu().numpy()
    records = []
    for i in range(len(scores)):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        records.append({
            "image_id": int(meta["image_id"]),
            "category_id": int(category_ids[int(labels[i])]),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "keypoints": [round(float(v), 3) for v in kpts[i].reshape(-1)],
            "score": round(float(scores[i]), 5),
        })
    return records


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
        pycocotools summaries are kept in ``self.summary``.
        """
        metrics = {name: 0.0 for name in (*KPT_STATS, *BOX_STATS)}
        if not records:
            self.summary = "no detections: every AP is 0"
            return metrics
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            dt = self.coco.loadRes(copy.deepcopy(records))
            for iou_type in ("keypoints", "bbox"):
                ev = COCOeval(self.coco, dt, iou_type)
                if iou_type == "keypoints":
                    ev.params.kpt_oks_sigmas = self.sigmas
                if image_ids is not None:
                    ev.params.imgIds = sorted(image_ids)
                print(f"--- {iou_type} ---")
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
                stats = [max(float(s), 0.0) for s in ev.stats]  # -1 means "no GT in range": report 0
                if iou_type == "keypoints":
                    metrics.update({name: stats[i] for i, name in enumerate(KPT_STATS)})
                else:
                    metrics.update({name: stats[i] for name, i in BOX_STATS.items()})
        self.summary = out.getvalue()
        return metrics


def format_table(metrics: dict[str, float]) -> str:
    """A one-screen table of the metrics, keypoints first."""
    names = [*KPT_STATS, *BOX_STATS]
    head = " | ".join(f"{n:>8}" for n in names)
    vals = " | ".join(f"{metrics.get(n, 0.0):8.4f}" for n in names)
    return f"{head}\n{vals}"

