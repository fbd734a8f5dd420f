"""COCO keypoints reader: ``person_keypoints_*.json`` + image folder, or any COCO-style keypoint dataset.

Handling of messy real files (each choice documented where it is made):
- classes are the categories that carry ``keypoints``; all must share K; annotations of other
  categories are skipped; K, names and skeleton come from the first such category (skeleton links that
  point outside 1..K, as in CrowdPose's file, are dropped with a warning);
- ``iscrowd`` annotations become ignore regions; persons without labelled keypoints stay box-only
  positives (all v = 0); missing ``area`` / ``num_keypoints`` / ``iscrowd`` are derived (box area,
  count of v > 0, 0); v = 0 keypoints get xy = 0; visibility comes from v, never from ``num_keypoints``;
- a missing or zero/negative-size ``bbox`` is replaced by the box around the labelled keypoints; if that
  has no area either the annotation is dropped (training and ground truth alike) with a warning;
- images without annotations stay in the split as negatives.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from yolopose.data.image_io import check_inside
from yolopose.data.reader import LabelledImages
from yolopose.data.sample import (DatasetError, DatasetInfo, clean_keypoints, flip_index_from_names,
                                  resolve_sigmas, validate_flip_index)
from yolopose.data.table import LabelTable, build_table, repair_boxes

log = logging.getLogger("yolopose.data")


def load_json(path: Path) -> Any:
    """``json.load`` with a ``DatasetError`` naming the file (missing, unreadable, malformed)."""
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise DatasetError(f"{path}: cannot read annotation file: {e}") from None


def _list_field(data: dict, key: str, source: str, required: bool = True) -> list:
    value = data.get(key, None if required else [])
    if not isinstance(value, list):
        raise DatasetError(f"{source}: top-level '{key}' must be a list, got {type(value).__name__}")
    return value


def parse_categories(categories: list, source: str, flip_index: Sequence[int] | None,
                     sigmas: Sequence[float] | None) -> DatasetInfo:
    """``DatasetInfo`` from the categories that have ``keypoints`` (config overrides validated)."""
    kcats = [c for c in categories if isinstance(c, dict) and c.get("keypoints")]
    if not kcats:
        raise DatasetError(f"{source}: no category has 'keypoints': not a keypoint annotation file")
    first = kcats[0]
    names = [str(n) for n in first["keypoints"]]
    k = len(names)
    for c in kcats[1:]:
        if len(c["keypoints"]) != k:
            raise DatasetError(f"{source}: category id {c.get('id')}: {len(c['keypoints'])} keypoints, but "
                               f"category id {first.get('id')} has {k}; all keypoint categories must share K")
        if [str(n) for n in c["keypoints"]] != names:
            log.warning("%s: category id %s names its keypoints differently; using the names of category id %s",
                        source, c.get("id"), first.get("id"))
    skeleton, dropped = [], []
    for link in first.get("skeleton") or []:
        ok = isinstance(link, (list, tuple)) and len(link) == 2 and all(isinstance(j, int) for j in link)
        if ok and all(1 <= j <= k for j in link) and link[0] != link[1]:
            skeleton.append((link[0] - 1, link[1] - 1))
        else:
            dropped.append(link)
    if dropped:
        log.warning("%s: dropped %d skeleton link(s) outside keypoints 1..%d: %s", source, len(dropped), k, dropped)
    fi = validate_flip_index(flip_index if flip_index is not None else flip_index_from_names(names), k, source)
    ids = []
    for c in kcats:
        if not isinstance(c.get("id"), int):
            raise DatasetError(f"{source}: category {c.get('name')!r}: 'id' must be an integer, got {c.get('id')!r}")
        ids.append(c["id"])
    return DatasetInfo(num_keypoints=k, keypoint_names=names, skeleton=skeleton, flip_index=fi,
                       sigmas=resolve_sigmas(sigmas, k, str(first.get("name", "")), source),
                       class_names=[str(c.get("name", c["id"])) for c in kcats], category_ids=ids)


def _parse_images(images: list, source: str, image_dir: Path) -> tuple[list[str], list[int], list[tuple[int, int]]]:
    names, ids, sizes, seen = [], [], [], set()
    for n, im in enumerate(images):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int):
            raise DatasetError(f"{source}: images[{n}]: 'id' must be an integer")
        what = f"image id {im['id']}"
        if im["id"] in seen:
            raise DatasetError(f"{source}: {what} appears more than once in 'images'")
        seen.add(im["id"])
        if not isinstance(im.get("file_name"), str):
            raise DatasetError(f"{source}: {what}: 'file_name' must be a string")
        check_inside(image_dir, im["file_name"], source, what)
        h, w = im.get("height", 0), im.get("width", 0)
        if not (isinstance(h, int) and isinstance(w, int) and h >= 0 and w >= 0):
            raise DatasetError(f"{source}: {what}: 'height'/'width' must be non-negative integers, got {h!r}/{w!r}")
        names.append(im["file_name"])
        ids.append(im["id"])
        sizes.append((h, w))
    return names, ids, sizes


def _numbers(values: list, expected: int, source: str, field: str, ann_ids: list[int]) -> np.ndarray:
    """``(A, expected)`` float64 from per-annotation lists of ``expected`` numbers, all finite."""
    try:
        arr = np.array(values, dtype=np.float64).reshape(len(values), expected)
    except (TypeError, ValueError):
        for a, v in zip(ann_ids, values):
            try:
                [float(x) for x in v]
            except (TypeError, ValueError):
                raise DatasetError(f"{source}: annotation id {a}: '{field}' holds a non-number: {v!r}") from None
        raise
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if len(bad):
        raise DatasetError(f"{source}: annotation id {ann_ids[bad[0]]}: '{field}' holds NaN or infinity")
    return arr


def parse_coco(ann_file: Path | str, image_dir: Path | str, flip_index: Sequence[int] | None = None,
               sigmas: Sequence[float] | None = None) -> tuple[DatasetInfo, LabelTable]:
    """Parse and validate a COCO keypoints file. Raises ``DatasetError`` naming the file and the id/field."""
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    source = str(ann_file)
    if not image_dir.is_dir():
        raise DatasetError(f"{source}: image folder {image_dir} does not exist")
    data = load_json(ann_file)
    if not isinstance(data, dict):
        raise DatasetError(f"{source}: top level must be a JSON object with 'images', 'annotations', 'categories'")
    info = parse_categories(_list_field(data, "categories", source), source, flip_index, sigmas)
    k = info.num_keypoints
    names, ids, sizes = _parse_images(_list_field(data, "images", source), source, image_dir)
    if not names:
        raise DatasetError(f"{source}: the split is empty ('images' has no entries)")
    index_of = {im: n for n, im in enumerate(ids)}
    class_of = {cid: c for c, cid in enumerate(info.category_ids)}
    known_cats = {c.get("id") for c in data["categories"]
                  if isinstance(c, dict) and isinstance(c.get("id"), Hashable)}
    rows: list[tuple[int, int, int, bool]] = []  # (ann id, image index, class, crowd)
    bboxes, kpts, areas, counts = [], [], [], []
    skipped = 0
    for n, a in enumerate(_list_field(data, "annotations", source, required=False)):
        if not isinstance(a, dict):
            raise DatasetError(f"{source}: annotations[{n}] is not an object")
        aid = a.get("id", n + 1)
        if not isinstance(a.get("image_id"), Hashable) or a["image_id"] not in index_of:  # a list: no TypeError
            raise DatasetError(f"{source}: annotation id {aid}: image_id {a.get('image_id')!r} is not in 'images'")
        cat = a.get("category_id")
        if not isinstance(cat, Hashable) or cat not in class_of:
            if not isinstance(cat, Hashable) or cat not in known_cats:
                raise DatasetError(f"{source}: annotation id {aid}: category_id {cat!r} is not in 'categories'")
            skipped += 1
            continue
        kp = a.get("keypoints") or [0] * (3 * k)
        if not isinstance(kp, list) or len(kp) != 3 * k:
            got = len(kp) if isinstance(kp, list) else type(kp).__name__
            raise DatasetError(f"{source}: annotation id {aid}: 'keypoints' has {got} values, "
                               f"expected {3 * k} (3 x {k} keypoints)")
        box = a.get("bbox", [0, 0, 0, 0])
        if not isinstance(box, list) or len(box) != 4:
            raise DatasetError(f"{source}: annotation id {aid}: 'bbox' must be [x, y, width, height], got {box!r}")
        for key in ("area", "num_keypoints"):
            if key in a and not (isinstance(a[key], (int, float)) and math.isfinite(a[key])):
                raise DatasetError(f"{source}: annotation id {aid}: '{key}' must be a finite number, got {a[key]!r}")
        rows.append((aid, index_of[a["image_id"]], class_of[cat], bool(a.get("iscrowd", 0))))
        bboxes.append(box)
        kpts.append(kp)
        areas.append(a.get("area", math.nan))
        counts.append(a.get("num_keypoints", -1))
    if skipped:
        log.info("%s: skipped %d annotation(s) of categories without keypoints", source, skipped)
    ann_ids = [r[0] for r in rows]
    if len(set(ann_ids)) != len(ann_ids):
        log.warning("%s: annotation ids are not unique; renumbering them 1..%d", source, len(ann_ids))
        ann_ids = list(range(1, len(ann_ids) + 1))
    xywh = _numbers(bboxes, 4, source, "bbox", ann_ids)
    keypoints = clean_keypoints(_numbers(kpts, 3 * k, source, "keypoints", ann_ids).reshape(-1, k, 3))
    keypoints = keypoints.astype(np.float32)
    boxes, keep = repair_boxes(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1), keypoints)
    if not keep.all():
        dropped = [ann_ids[i] for i in np.flatnonzero(~keep)[:10]]
        log.warning("%s: dropped %d annotation(s) with no box area and no keypoint extent (ids %s%s)", source,
                    int((~keep).sum()), dropped, "..." if (~keep).sum() > 10 else "")
    areas_a = np.array(areas, np.float64).reshape(-1)
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    areas_a = np.where(np.isnan(areas_a) | (areas_a <= 0), box_area, areas_a)
    counts_a = np.array(counts, np.int64).reshape(-1)
    counts_a = np.where(counts_a < 0, (keypoints[..., 2] > 0).sum(-1), counts_a)
    table = build_table(names, ids, sizes, np.array([r[1] for r in rows], np.int64)[keep], boxes[keep],
                        keypoints[keep], np.array([r[2] for r in rows], np.int64)[keep],
                        np.array([r[3] for r in rows], bool)[keep], np.array(ann_ids, np.int64)[keep],
                        areas_a[keep], counts_a[keep])
    return info, table


class CocoKeypoints(LabelledImages):
    """A COCO keypoints split: ``load(i) -> Sample``, ``coco_gt()``, ``info``. Validates everything in ``__init__``.

    Args:
        ann_file: COCO keypoints JSON.
        image_dir: folder that ``images[].file_name`` is relative to.
        flip_index: mirror partner of each keypoint; default: derived from left/right in the names.
        sigmas: per-keypoint OKS sigmas; default: COCO's for a 17-keypoint ``person``, else uniform.
    """

    def __init__(self, ann_file: Path | str, image_dir: Path | str, flip_index: Sequence[int] | None = None,
                 sigmas: Sequence[float] | None = None) -> None:
        info, table = parse_coco(ann_file, image_dir, flip_index, sigmas)
        super().__init__(info, table, Path(image_dir), str(ann_file))
