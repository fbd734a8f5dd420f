"""The images a lower-precision export calibrates on and is scored on.

Validation set: ``--val-ann`` + ``--val-images`` (COCO keypoints), else the validation split of the run that wrote
the checkpoint (its ``config.yaml``, which Lightning saves in ``<run>/version_N/`` beside ``checkpoints/``: COCO,
YOLO-txt and the synthetic set alike). Calibration images: ``--calib DIR`` (any images), else the run's training
split (else its validation split), drawn with a fixed seed; every image goes through the inference letterbox.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from yolopose.data.image_io import IMAGE_SUFFIXES, read_image
from yolopose.data.transforms import preprocess
from yolopose.export.contract import ExportError


@dataclass
class CheckData:
    """``calibration (N, 3, S, S)`` inputs; ``val_images`` ``(image_id, RGB)`` with ``gt`` (None: no validation set)."""
    calibration: np.ndarray
    calibration_source: str
    gt: dict | None = None
    val_images: list[tuple[int, np.ndarray]] = field(default_factory=list)
    val_source: str = ""


def run_config(weights: str | Path) -> dict | None:
    """The ``config.yaml`` LightningCLI wrote for the run of a checkpoint at ``<run>/checkpoints/x.ckpt``."""
    path = Path(weights).resolve().parent.parent / "config.yaml"
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None


def _run_splits(cfg: dict) -> tuple[Any, Any] | None:
    """``(train, val)`` readers of a run config's ``data`` section, or None if it cannot be read here."""
    from yolopose.data.datamodule import PoseDataModule
    from yolopose.data.sample import DatasetError

    data = dict(cfg.get("data") or {})
    if data.get("format") == "synthetic":
        from yolopose.synthetic import SyntheticConfig

        data["synthetic"] = SyntheticConfig(**(data.get("synthetic") or {}))
    keep = ("format", "train_ann", "train_images", "val_ann", "val_images", "yaml", "synthetic", "flip_index",
            "sigmas")
    try:
        dm = PoseDataModule(**{k: v for k, v in data.items() if k in keep and v is not None}, albumentations=None)
    except (DatasetError, TypeError, OSError):
        return None
    return dm.train_split, dm.val_split


def _letterboxed(images: list[np.ndarray], size: int) -> np.ndarray:
    return np.stack([preprocess(im, size)[0] for im in images]).astype(np.float32)


def check_data(weights: str | Path, size: int, calib_dir: str | None, num_calib: int, val_ann: str | None,
               val_images: str | None, num_val: int | None = None, seed: int = 0,
               need_calibration: bool = True) -> CheckData:
    """Gather calibration and validation images for an export at input size ``size`` (see the module docstring).

    Raises:
        ExportError: no calibration images could be found (when ``need_calibration``), or only one of ``val_ann`` /
            ``val_images`` is given.
    """
    if bool(val_ann) != bool(val_images):
        raise ExportError("--val-ann and --val-images go together (a COCO keypoints JSON and its image folder)")
    rng = np.random.default_rng(seed)
    splits = None
    if not (val_ann and calib_dir):
        cfg = run_config(weights)
        splits = _run_splits(cfg) if cfg else None
    val = None
    if val_ann:
        from yolopose.data.coco import CocoKeypoints

        val = CocoKeypoints(val_ann, val_images)
    elif splits is not None:
        val = splits[1]
    out = CheckData(np.zeros((0, 3, size, size), np.float32), "")
    if val is not None:
        idx = np.arange(len(val)) if not num_val or num_val >= len(val) else np.sort(rng.choice(len(val), num_val,
                                                                                                  replace=False))
        out.val_images = [(val.image_id(int(i)), val.load(int(i)).image) for i in idx]
        gt = val.coco_gt()
        keep = {i for i, _ in out.val_images}
        out.gt = {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
                  "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
        out.val_source = val.source
    if not need_calibration:
        return out
    if calib_dir:
        files = sorted(p for p in Path(calib_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ExportError(f"--calib {calib_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        pick = rng.permutation(len(files))[:num_calib]
        out.calibration = _letterboxed([read_image(files[i]) for i in pick], size)
        out.calibration_source = f"{len(pick)} images of {calib_dir}"
        return out
    source = splits[0] if splits is not None and len(splits[0]) else val
    if source is None or not len(source):
        raise ExportError("--int8 needs calibration images: --calib DIR, or a checkpoint whose run folder holds its "
                          "config.yaml (the training data)")
    pick = rng.permutation(len(source))[:num_calib]
    out.calibration = _letterboxed([source.load(int(i)).image for i in pick], size)
    out.calibration_source = f"{len(pick)} images of {source.source}"
    return out
