"""YOLO-pose txt reader (the Ultralytics layout), producing the same ``Sample`` as the COCO reader.

Data YAML: ``path`` (dataset root; relative to the YAML's folder; default that folder), ``train`` /
``val`` (a folder of images, searched recursively, a ``.txt`` list of image paths, or a list of those;
relative entries are relative to ``path``, lines of a list file relative to the list's folder),
``kpt_shape: [K, 3 or 2]``, ``flip_idx`` (optional), ``names`` (dict or list), and optionally
``kpt_names`` (a list, or a per-class dict as newer Ultralytics writes) and ``skeleton`` (0-based pairs).

Labels: ``.../images/.../x.jpg`` -> ``.../labels/.../x.txt``, one ``cls cx cy w h (x y [v])*K`` line per
object, normalised to [0, 1] by the (EXIF-upright) image size. A missing or empty label file makes a
negative image. With ``kpt_shape[1] == 2`` there is no visibility column: a point at exactly (0, 0) is
taken as unlabelled (how Ultralytics writes missing points), every other point as visible (v = 2).

Image ids: the integer file stems when all stems are digits and unique (COCO-converted sets keep their
COCO ids), else 1..N in listing order.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import yaml as pyyaml

from yolopose.data.coco_person import COCO_KEYPOINT_NAMES, COCO_SKELETON_1BASED
from yolopose.data.image_io import IMAGE_SUFFIXES
from yolopose.data.reader import LabelledImages
from yolopose.data.sample import (DatasetError, DatasetInfo, clean_keypoints, flip_index_from_names,
                                  resolve_sigmas, validate_flip_index)
from yolopose.data.table import LabelTable, build_table, repair_boxes

log = logging.getLogger("yolopose.data")


def label_path(image_path: Path) -> Path:
    """Ultralytics rule: the last ``/images/`` component becomes ``/labels/``, the suffix ``.txt``."""
    s = str(image_path)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        s = sb.join(s.rsplit(sa, 1))
    return Path(s).with_suffix(".txt")


def _list_images(entry: str | Path, root: Path, source: str) -> list[Path]:
    p = Path(entry)
    p = p if p.is_absolute() else root / p
    if p.is_dir():
        return sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
    if p.is_file() and p.suffix == ".txt":
        lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
        return [Path(ln) if Path(ln).is_absolute() else p.parent / ln for ln in lines]
    raise DatasetError(f"{source}: image list {entry!r} ({p}) is neither a folder nor a .txt list of images")


def _parse_label_file(path: Path, k: int, ndim: int, num_classes: int) -> np.ndarray:
    """``(n, 5 + 3K)`` rows ``cls cx cy w h (x y v)*K`` (normalised) from one label file (none: ``(0, 5+3K)``)."""
    if not path.is_file():
        return np.zeros((0, 5 + 3 * k))
    rows = []
    expected = 5 + k * ndim
    for ln, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != expected:
            raise DatasetError(f"{path}: line {ln}: {len(parts)} values, expected {expected} "
                               f"(class, 4 box values, {k} keypoints x {ndim})")
        try:
            values = [float(x) for x in parts]
        except ValueError:
            raise DatasetError(f"{path}: line {ln}: not a number in {line.strip()!r}") from None
        if not all(math.isfinite(x) for x in values):
            raise DatasetError(f"{path}: line {ln}: NaN or infinity in {line.strip()!r}")
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < num_classes:
            raise DatasetError(f"{path}: line {ln}: class {parts[0]} is not an integer in 0..{num_classes - 1}")
        kp = np.array(values[5:], np.float64).reshape(k, ndim)
        if ndim == 2:
            kp = np.concatenate([kp, 2.0 * (kp != 0).any(axis=1, keepdims=True)], axis=1)
        rows.append(np.concatenate([values[:5], kp.reshape(-1)]))
    return np.array(rows).reshape(-1, 5 + 3 * k)


def _dataset_info(cfg: dict, source: str, flip_index: Sequence[int] | None,
                  sigmas: Sequence[float] | None) -> tuple[DatasetInfo, int]:
    shape = cfg.get("kpt_shape")
    if not (isinstance(shape, list) and len(shape) == 2 and isinstance(shape[0], int) and shape[0] > 0
            and shape[1] in (2, 3)):
        raise DatasetError(f"{source}: 'kpt_shape' must be [K, 2] or [K, 3], got {shape!r}")
    k, ndim = shape
    names = cfg.get("names")
    if isinstance(names, dict):
        class_names = [str(names[i]) for i in sorted(names)]
    elif isinstance(names, list) and names:
        class_names = [str(n) for n in names]
    else:
        raise DatasetError(f"{source}: 'names' must be a non-empty list or dict of class names, got {names!r}")
    kpt_names = cfg.get("kpt_names")
    if isinstance(kpt_names, dict):
        kpt_names = kpt_names[sorted(kpt_names)[0]]
    is_coco_person = k == len(COCO_KEYPOINT_NAMES) and class_names == ["person"]
    if kpt_names is None:
        kpt_names = list(COCO_KEYPOINT_NAMES) if is_coco_person else [f"kpt_{i}" for i in range(k)]
    if len(kpt_names) != k:
        raise DatasetError(f"{source}: 'kpt_names' has {len(kpt_names)} names, expected {k}")
    skeleton = cfg.get("skeleton")
    if skeleton is None:
        skeleton = [(a - 1, b - 1) for a, b in COCO_SKELETON_1BASED] if is_coco_person else []
    skeleton = [(int(a), int(b)) for a, b in skeleton if 0 <= a < k and 0 <= b < k]
    if flip_index is None:
        flip_index = cfg.get("flip_idx")
    if flip_index is None:
        flip_index = flip_index_from_names(kpt_names)
    info = DatasetInfo(num_keypoints=k, keypoint_names=[str(n) for n in kpt_names], skeleton=skeleton,
                       flip_index=validate_flip_index(flip_index, k, source),
                       sigmas=resolve_sigmas(sigmas, k, class_names[0], source),
                       class_names=class_names, category_ids=list(range(1, len(class_names) + 1)))
    return info, ndim


class YoloPoseTxt(LabelledImages):
    """One split of a YOLO-pose dataset: ``load(i) -> Sample``, ``coco_gt()``, ``info``.

    Args:
        yaml_path: the data YAML.
        split: ``"train"`` or ``"val"``.
        flip_index: overrides the YAML's ``flip_idx``.
        sigmas: per-keypoint OKS sigmas; default: COCO's for a 17-keypoint ``person``, else uniform.
    """

    def __init__(self, yaml_path: Path | str, split: Literal["train", "val"] = "train",
                 flip_index: Sequence[int] | None = None, sigmas: Sequence[float] | None = None) -> None:
        yaml_path = Path(yaml_path)
        source = str(yaml_path)
        if not yaml_path.is_file():
            raise DatasetError(f"{source}: data YAML not found")
        try:
            cfg = pyyaml.safe_load(yaml_path.read_text())
        except pyyaml.YAMLError as e:
            raise DatasetError(f"{source}: malformed YAML: {e}") from None
        if not isinstance(cfg, dict):
            raise DatasetError(f"{source}: top level must be a mapping")
        info, ndim = _dataset_info(cfg, source, flip_index, sigmas)
        root = Path(cfg.get("path") or ".")
        root = (root if root.is_absolute() else yaml_path.parent / root).resolve()
        if not root.is_dir():
            raise DatasetError(f"{source}: 'path' {root} is not a folder")
        if split not in cfg or not cfg[split]:
            raise DatasetError(f"{source}: no '{split}' entry")
        entries = cfg[split] if isinstance(cfg[split], list) else [cfg[split]]
        images = [p for e in entries for p in _list_images(e, root, source)]
        if not images:
            raise DatasetError(f"{source}: the '{split}' split is empty (no images in {entries})")
        super().__init__(info, self._parse(images, root, info, ndim), root, source, normalized=True)

    @staticmethod
    def _parse(images: list[Path], root: Path, info: DatasetInfo, ndim: int) -> LabelTable:
        """Read every image's label file into a normalised ``LabelTable``."""
        k = info.num_keypoints
        labels = [_parse_label_file(label_path(p), k, ndim, info.num_classes) for p in images]
        stems = [p.stem for p in images]
        if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
            ids = [int(s) for s in stems]
        else:
            ids = list(range(1, len(images) + 1))
        rows = np.concatenate(labels) if labels else np.zeros((0, 5 + 3 * k))
        cxcy, wh = rows[:, 1:3], rows[:, 3:5]
        keypoints = clean_keypoints(rows[:, 5:].reshape(-1, k, 3).astype(np.float32))
        boxes, keep = repair_boxes(np.concatenate([cxcy - wh / 2, cxcy + wh / 2], axis=1), keypoints, 1e-6)
        n = len(rows)
        return build_table(
            file_names=[str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in images],
            image_ids=ids, sizes=[(0, 0)] * len(images),
            ann_image_index=np.repeat(np.arange(len(images)), [len(x) for x in labels])[keep],
            boxes=boxes[keep], keypoints=keypoints[keep], classes=rows[keep, 0].astype(np.int64),
            crowd=np.zeros(int(keep.sum()), bool), ann_ids=np.arange(1, n + 1)[keep], areas=np.zeros(int(keep.sum())),
            num_keypoints=(keypoints[keep, :, 2] > 0).sum(-1))
