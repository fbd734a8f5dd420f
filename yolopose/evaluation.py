"""COCO evaluation: detections -> COCO result records -> pycocotools keypoint and box AP.

Metric names (as logged): ``kpt_AP, kpt_AP50, kpt_AP75, kpt_APm, kpt_APl, kpt_AR, box_AP, box_AP50`` over every
evaluated image, and the same names ending in ``_labelled_imgs`` over the images that hold at least one
labelled instance (a non-crowd annotation with ``num_keypoints > 0``): the image set the YOLO-Pose reference
(TI edgeai-yolov5) and Ultralytics score COCO val2017 on (2346 of its 5000 images).
Both evaluations run on exactly the records written to ``predictions.json`` (keypoints, score and
bbox per detection), so ``COCO.loadRes('predictions.json')`` + ``COCOeval`` reproduces the numbers
(with ``params.imgIds`` set to the labelled images for the second set).

``ValidationEvaluator`` is what validation holds (DETR's shape): ``update(detections, metas)`` per batch,
``compute()`` once per epoch (gathers across DDP ranks), ``write(out_dir)`` on rank 0, ``reset()``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from yolopose.postprocess import Detections, undo_letterbox

KPT_STATS = ("kpt_AP", "kpt_AP50", "kpt_AP75", "kpt_APm", "kpt_APl", "kpt_AR")
BOX_STATS = {"box_AP": 0, "box_AP50": 1}
LABELLED = "_labelled_imgs"
"""Suffix of the metrics over the images with a labelled instance (see the module docstring)."""
METRIC_NAMES = (*KPT_STATS, *BOX_STATS)


def labelled_image_ids(gt: dict) -> set[int]:
    """Ids of the ground-truth images with at least one non-crowd annotation with ``num_keypoints > 0``
    (the annotations pycocotools' keypoint evaluation does not ignore)."""
    return {int(a["image_id"]) for a in gt["annotations"]
            if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0}


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
    ``rint`` rounds half to even exactly as Python's ``round(float(v), d)`` does, value for value (much
    faster than rounding 3K + 5 Python floats per detection).
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
        self.labelled_ids = labelled_image_ids(gt)
        self.summary = ""

    def evaluate(self, records: list[dict], image_ids: set[int] | None = None) -> dict[str, float]:
        """Keypoint and box metrics of ``records`` over ``image_ids`` (default: every GT image), and the same
        metrics (names ending in ``LABELLED``) over those of the images that hold a labelled instance.

        An empty record list scores 0 (pycocotools' ``loadRes([])`` would raise). The printed
        pycocotools keypoint summary and the two box lines are kept in ``self.summary``.

        ``records`` are not modified (``loadRes`` adds keys to each dict: it gets shallow copies). The box
        evaluation runs on the ``all`` area range only, the one ``box_AP``/``box_AP50`` read: the same
        numbers as a full ``COCOeval`` for a quarter of its per-image work. The labelled-image metrics reuse
        the per-image matching of the full evaluation (``_restricted``): only the accumulation is repeated.
        """
        evaluated = set(self.coco.getImgIds()) if image_ids is None else set(image_ids)
        labelled = sorted(evaluated & self.labelled_ids)
        metrics = {name + suffix: 0.0 for suffix in ("", LABELLED) for name in METRIC_NAMES}
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
                for suffix, view in (("", ev), (LABELLED, _restricted(ev, labelled) if labelled else None)):
                    if view is None:
                        continue
                    if suffix:
                        print(f"--- {iou_type}, the {len(labelled)} images with a labelled instance ---")
                    view.accumulate()
                    metrics.update({k + suffix: v for k, v in _read_stats(view, iou_type).items()})
        self.summary = out.getvalue()
        return metrics


def _read_stats(ev: COCOeval, iou_type: str) -> dict[str, float]:
    """The logged metrics of an accumulated ``COCOeval`` (its summary printed); -1 ("no GT in range") reads 0."""
    if iou_type == "keypoints":
        ev.summarize()
        return {name: max(float(ev.stats[i]), 0.0) for i, name in enumerate(KPT_STATS)}
    return {name: max(_average_precision(ev, iou), 0.0) for name, iou in (("box_AP", None), ("box_AP50", 0.5))}


def _restricted(ev: COCOeval, image_ids: list[int]) -> COCOeval:
    """A view of an evaluated (not yet accumulated) ``COCOeval`` over a subset of its images, ready for
    ``accumulate``: exactly what a fresh ``COCOeval`` with ``params.imgIds = image_ids`` would accumulate,
    since matching is per image. (``accumulate(p)`` with a subset ``p.imgIds`` would index ``evalImgs`` wrongly.)
    """
    pe = ev._paramsEval
    all_ids = list(pe.imgIds)
    wanted = set(image_ids)
    keep = [n for n, i in enumerate(all_ids) if i in wanted]
    n_img, n_area = len(all_ids), len(pe.areaRng)
    n_cat = len(pe.catIds) if pe.useCats else 1
    view = copy.copy(ev)
    view.evalImgs = [ev.evalImgs[c * n_area * n_img + a * n_img + n]
                     for c in range(n_cat) for a in range(n_area) for n in keep]
    view._paramsEval = copy.deepcopy(pe)
    view._paramsEval.imgIds = [all_ids[n] for n in keep]
    view.params = copy.deepcopy(ev.params)
    view.params.imgIds = list(view._paramsEval.imgIds)
    view.eval, view.stats = {}, []
    return view


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


def format_table(metrics: dict[str, float], images: int | None = None, labelled: int | None = None) -> str:
    """A one-screen table of the metrics, keypoints first: one row over all evaluated images, one over the
    images with a labelled instance (when ``metrics`` has them). ``images``/``labelled``: counts for the labels."""
    names = list(METRIC_NAMES)
    rows = [("all images" if images is None else f"all {images} images", "")]
    if any(n + LABELLED in metrics for n in names):
        rows.append(("labelled images" if labelled is None else f"{labelled} labelled images", LABELLED))
    width = max(len(label) for label, _ in rows)
    head = " " * width + " | " + " | ".join(f"{n:>8}" for n in names)
    lines = [f"{label:<{width}} | " + " | ".join(f"{metrics.get(n + suffix, 0.0):8.4f}" for n in names)
             for label, suffix in rows]
    return "\n".join([head, *lines])


class ValidationEvaluator:
    """One validation pass's bookkeeping, in DETR's shape: ``update`` per batch, ``compute`` once (a collective
    under DDP: every rank calls it), ``write`` on rank 0, ``reset`` before the next pass.

    Args:
        gt: COCO ground truth of the validation split, in original image pixels (see ``CocoEvaluator``).
        sigmas: ``(K,)`` OKS sigmas.
        category_ids: COCO category id of each class index.
    """

    def __init__(self, gt: dict, sigmas: list[float] | np.ndarray, category_ids: list[int]) -> None:
        self.scorer = CocoEvaluator(gt, sigmas)
        self.category_ids = list(category_ids)
        self.reset()

    def reset(self) -> None:
        """Forget the records of the previous pass."""
        self.records: list[dict] = []
        self.image_ids: list[int] = []
        self.metrics: dict[str, float] = {}
        self._gathered: tuple[list[dict], set[int]] = ([], set())

    def update(self, detections: Detections, metas: list[dict]) -> None:
        """Add one batch: ``detections`` of B images (``select_detections``, input pixels; pass them on the CPU to
        copy once per batch) and their B letterbox ``metas`` (``image_id``, ``orig_size``, ``scale``, ``pad``)."""
        det = detections.to("cpu")
        for b, meta in enumerate(metas):
            self.records.extend(detections_to_records(det.image(b), meta, self.category_ids))
            self.image_ids.append(int(meta["image_id"]))

    def compute(self) -> dict[str, float]:
        """Gather every rank's records (each image once), score them on rank 0 and give every rank the metrics."""
        records, ids = gather_records(self.records, self.image_ids)
        self._gathered = (records, ids)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        metrics = self.scorer.evaluate(records, ids) if not distributed or dist.get_rank() == 0 else {}
        if distributed:
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        self.metrics = metrics
        return metrics

    def write(self, out_dir: Path | str, **extra: Any) -> None:
        """``predictions.json`` (the gathered records) and ``metrics.json`` (``extra`` such as the epoch, the
        image counts, then the metrics) in ``out_dir``; the AP table on stdout. Call after ``compute``, on one rank."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        records, ids = self._gathered
        labelled = len(ids & self.scorer.labelled_ids)
        (out / "predictions.json").write_text(json.dumps(records))
        summary = {**extra, "images": len(ids), "labelled_images": labelled, **self.metrics}
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
        where = ", ".join(f"{k} {v}" for k, v in extra.items())
        print(f"\nvalidation{', ' + where if where else ''} ({len(ids)} images, {len(records)} detections):\n"
              f"{format_table(self.metrics, len(ids), labelled)}\n"
              f"(labelled images: those with a labelled instance; predictions.json and metrics.json in {out})",
              flush=True)
