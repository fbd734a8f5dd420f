"""``LabelledImages``: what every dataset reader offers once its labels are parsed into a ``LabelTable``.

The readers (``CocoKeypoints``, ``YoloPoseTxt``) only parse; loading a ``Sample`` and producing the
pycocotools ground truth live here, so both formats behave identically.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from yolopose.data.image_io import ImageReadError, read_image
from yolopose.data.sample import DatasetError, DatasetInfo, Sample
from yolopose.data.table import LabelTable

log = logging.getLogger("yolopose.data")


class LabelledImages:
    """A split: images under ``image_root`` with labels in ``table``.

    ``normalized`` tables hold coordinates in [0, 1] of the decoded image size (YOLO txt); others
    hold original pixels.
    """

    def __init__(self, info: DatasetInfo, table: LabelTable, image_root: Path, source: str,
                 normalized: bool = False) -> None:
        self.info = info
        self.table = table
        self.image_root = Path(image_root)
        self.source = source
        self.normalized = normalized
        self._measured: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self.table)

    def image_path(self, i: int) -> Path:
        """Path of image i on disk."""
        return self.image_root / str(self.table.file_names[i])

    def image_id(self, i: int) -> int:
        return int(self.table.image_ids[i])

    def declared_size(self, i: int) -> tuple[int, int] | None:
        """``(h, w)`` of image i as the annotations state it, ``None`` when they do not."""
        h, w = int(self.table.sizes[i, 0]), int(self.table.sizes[i, 1])
        return (h, w) if h and w else None

    def load(self, i: int, bgr: bool = False) -> Sample:
        """Decode image i and return it with its labels in its pixel frame (``bgr``: see ``read_image``).

        Raises:
            ImageReadError: missing/undecodable image, or a size that contradicts the annotations.
        """
        declared = (int(self.table.sizes[i, 0]), int(self.table.sizes[i, 1]))
        image = read_image(self.image_path(i), declared, bgr)
        h, w = image.shape[:2]
        boxes, keypoints, classes, crowd = self.table.labels(i)
        if self.normalized:
            boxes *= np.array([w, h, w, h], np.float32)
            crowd *= np.array([w, h, w, h], np.float32)
            keypoints[..., :2] *= np.array([w, h], np.float32)
        return Sample(image=image, boxes=boxes, keypoints=keypoints, classes=classes, crowd_boxes=crowd,
                      image_id=self.image_id(i), orig_size=(h, w))

    def image_sizes(self) -> np.ndarray:
        """``(I, 2)`` ``(h, w)`` of every image: declared where known, otherwise decoded once and cached.

        An image that cannot be read gets ``(0, 0)`` (logged, as ``ValDataset`` logs and counts it), so a
        missing validation image costs its ground truth, not the run.
        """
        sizes = self.table.sizes.copy()
        for i in np.flatnonzero((sizes == 0).any(axis=1)).tolist():
            if i not in self._measured:
                try:
                    self._measured[i] = read_image(self.image_path(i)).shape[:2]
                except ImageReadError as e:
                    log.error("image size unknown, its ground truth has no extent: %s", e)
                    self._measured[i] = (0, 0)
            sizes[i] = self._measured[i]
        return sizes

    def subset(self, images: np.ndarray) -> LabelledImages:
        """The same split restricted to the images at the sorted indices ``images``."""
        return LabelledImages(self.info, self.table.subset(images), self.image_root, self.source, self.normalized)

    def coco_gt(self) -> dict:
        """pycocotools ground truth in original image pixels (``images``, ``annotations``, ``categories``)."""
        sizes = self.image_sizes()
        table = self.table.to_pixels(sizes) if self.normalized else self.table
        return table.coco_gt(self.info, sizes)


def check_negatives_fraction(fraction: float) -> None:
    """``DatasetError`` unless ``data.train_negatives`` is a fraction in [0, 1]."""
    if not 0.0 <= fraction <= 1.0:
        raise DatasetError(f"data.train_negatives must be a fraction in [0, 1] (0 none, 1 all), got {fraction}")


def keep_negatives(split: LabelledImages, fraction: float, seed: int = 0) -> LabelledImages:
    """``split`` with every image that holds a labelled instance (``LabelTable.labelled_images``) and
    ``round(fraction * n)`` of its ``n`` other images ("negatives": no annotation, only crowd regions, or only
    persons without labelled keypoints), drawn with a fixed ``seed`` (the same images every run and rank).

    ``fraction`` 1 keeps the split as it is, 0 keeps the labelled images only. Raises ``DatasetError`` for a
    fraction outside [0, 1] or when nothing would be left.
    """
    check_negatives_fraction(fraction)
    labelled = split.table.labelled_images()
    negatives = np.flatnonzero(~labelled)
    keep_n = round(fraction * len(negatives))
    if keep_n == len(negatives):
        return split
    kept = np.random.default_rng(seed).permutation(negatives)[:keep_n]
    images = np.sort(np.concatenate([np.flatnonzero(labelled), kept]))
    if not len(images):
        raise DatasetError(f"{split.source}: no image holds an instance with labelled keypoints and "
                           f"data.train_negatives={fraction} keeps none of the others: nothing to train on")
    log.info("%s: %d images with a labelled instance + %d of %d without (data.train_negatives=%g): %d images",
             split.source, int(labelled.sum()), keep_n, len(negatives), fraction, len(images))
    return split.subset(images)
