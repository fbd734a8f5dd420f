"""``LabelTable``: every label of one split in a few flat numpy arrays.

Flat arrays instead of one Python object per image keep a large split (COCO train: 57k images, 262k
annotations) compact, and forked DataLoader workers share them without copy-on-write page faults
caused by reference counting.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yolopose.data.sample import DatasetInfo


@dataclass
class LabelTable:
    """Labels of I images and A annotations (K keypoints), annotations grouped by image.

    Attributes:
        file_names: ``(I,)`` str, image paths relative to the image root.
        image_ids: ``(I,)`` int64.
        sizes: ``(I, 2)`` int64 ``(h, w)`` as the annotations declare them; 0 = unknown.
        offsets: ``(I + 1,)`` int64; image i owns annotations ``offsets[i]:offsets[i + 1]``.
        boxes: ``(A, 4)`` float64 xyxy, original pixels.
        keypoints: ``(A, K, 3)`` float32 (x, y, v), v in {0, 1, 2}, xy = 0 where v = 0.
        classes: ``(A,)`` int64 contiguous class index.
        crowd: ``(A,)`` bool, iscrowd regions.
        ann_ids: ``(A,)`` int64 annotation ids.
        areas: ``(A,)`` float64 ``area`` (from the file, else the box area).
        num_keypoints: ``(A,)`` int64 ``num_keypoints`` (from the file, else the count of v > 0).
    """
    file_names: np.ndarray
    image_ids: np.ndarray
    sizes: np.ndarray
    offsets: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray
    classes: np.ndarray
    crowd: np.ndarray
    ann_ids: np.ndarray
    areas: np.ndarray
    num_keypoints: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_annotations(self) -> int:
        return len(self.ann_ids)

    def mean_pose(self) -> np.ndarray:
        """``(K, 2)`` mean offset of each keypoint from its box centre, in box widths/heights, over the
        labelled keypoints of non-crowd annotations with a box; 0 for a keypoint never labelled.
        Unit-free, so normalised (YOLO) and pixel tables give the same answer."""
        k = self.keypoints.shape[1]
        ok = ~self.crowd & (self.boxes[:, 2] > self.boxes[:, 0]) & (self.boxes[:, 3] > self.boxes[:, 1])
        boxes, kpts = self.boxes[ok], self.keypoints[ok].astype(np.float64)
        if not len(boxes):
            return np.zeros((k, 2))
        centre = (boxes[:, None, :2] + boxes[:, None, 2:]) / 2
        size = boxes[:, None, 2:] - boxes[:, None, :2]
        rel = (kpts[..., :2] - centre) / size                                   # (A, K, 2)
        labelled = (kpts[..., 2] > 0)[..., None]
        count = labelled.sum(0)
        return np.where(count > 0, (rel * labelled).sum(0) / np.maximum(count, 1), 0.0)

    def labelled_images(self) -> np.ndarray:
        """``(I,)`` bool: image i holds at least one non-crowd annotation with ``num_keypoints > 0`` (the
        images the evaluation's ``*_labelled_imgs`` metrics score; see ``yolopose.evaluation``)."""
        has = ~self.crowd & (self.num_keypoints > 0)
        image_of_ann = np.repeat(np.arange(len(self)), np.diff(self.offsets))
        return np.bincount(image_of_ann[has], minlength=len(self)) > 0

    def subset(self, images: np.ndarray) -> LabelTable:
        """A table of the images at the sorted indices ``images (I',)`` with their annotations."""
        images = np.asarray(images, np.int64)
        counts = np.diff(self.offsets)[images]
        anns = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in images]
                              or [np.zeros(0, np.int64)]).astype(np.int64)
        return LabelTable(self.file_names[images], self.image_ids[images], self.sizes[images],
                          np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), self.boxes[anns],
                          self.keypoints[anns], self.classes[anns], self.crowd[anns], self.ann_ids[anns],
                          self.areas[anns], self.num_keypoints[anns])

    def labels(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Image i's ``(boxes (N, 4) f32, keypoints (N, K, 3) f32, classes (N,) i64, crowd_boxes (M, 4) f32)``."""
        sl = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
        crowd = self.crowd[sl]
        person = ~crowd
        return (self.boxes[sl][person].astype(np.float32), self.keypoints[sl][person].copy(),
                self.classes[sl][person].copy(), self.boxes[sl][crowd].astype(np.float32))

    def to_pixels(self, sizes: np.ndarray) -> LabelTable:
        """A copy with normalised coordinates scaled by each image's ``sizes (I, 2)`` ``(h, w)``; ``area``
        becomes the box area in pixels."""
        hw = np.repeat(np.asarray(sizes, np.float64), np.diff(self.offsets), axis=0)  # (A, 2)
        wh = hw[:, ::-1]
        boxes = self.boxes * np.concatenate([wh, wh], axis=1)
        keypoints = self.keypoints.copy()
        keypoints[..., :2] *= wh[:, None, :].astype(np.float32)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return LabelTable(self.file_names, self.image_ids, np.asarray(sizes, np.int64), self.offsets, boxes,
                          keypoints, self.classes, self.crowd, self.ann_ids, areas, self.num_keypoints)

    def coco_gt(self, info: DatasetInfo, sizes: np.ndarray | None = None) -> dict:
        """A pycocotools ground-truth dict (original pixels) with ``area``, ``num_keypoints`` and
        ``iscrowd`` on every annotation. ``sizes (I, 2)`` overrides the declared ``(h, w)``."""
        sizes = self.sizes if sizes is None else sizes
        images = []
        for name, image_id, (h, w) in zip(self.file_names.tolist(), self.image_ids.tolist(), sizes.tolist()):
            entry = {"id": image_id, "file_name": name}
            if h and w:
                entry.update(height=h, width=w)
            images.append(entry)
        image_of_ann = np.repeat(self.image_ids, np.diff(self.offsets)).tolist()
        xywh = np.concatenate([self.boxes[:, :2], self.boxes[:, 2:] - self.boxes[:, :2]], axis=1)
        kpts = self.keypoints.reshape(len(self.keypoints), -1).astype(np.float64)
        annotations = [
            {"id": a, "image_id": im, "category_id": info.category_ids[c], "bbox": box, "area": area,
             "iscrowd": int(crowd), "num_keypoints": nk, "keypoints": kp}
            for a, im, c, box, area, crowd, nk, kp in zip(
                self.ann_ids.tolist(), image_of_ann, self.classes.tolist(), xywh.tolist(),
                self.areas.tolist(), self.crowd.tolist(), self.num_keypoints.tolist(), kpts.tolist())]
        skeleton = [[a + 1, b + 1] for a, b in info.skeleton]
        categories = [{"id": cid, "name": name, "supercategory": name, "keypoints": list(info.keypoint_names),
                       "skeleton": skeleton} for cid, name in zip(info.category_ids, info.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}


def build_table(file_names: list[str], image_ids: list[int], sizes: list[tuple[int, int]],
                ann_image_index: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray, classes: np.ndarray,
                crowd: np.ndarray, ann_ids: np.ndarray, areas: np.ndarray, num_keypoints: np.ndarray) -> LabelTable:
    """Group annotations by image (stable: file order within an image) into a ``LabelTable``.

    ``ann_image_index (A,)`` is each annotation's position in ``file_names``; the other ``(A, ...)``
    arrays are per annotation in any order.
    """
    order = np.argsort(ann_image_index, kind="stable")
    counts = np.bincount(ann_image_index, minlength=len(file_names)) if len(order) else np.zeros(len(file_names), int)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return LabelTable(
        file_names=np.array(file_names, dtype=np.str_), image_ids=np.asarray(image_ids, np.int64),
        sizes=np.asarray(sizes, np.int64).reshape(-1, 2), offsets=offsets,
        boxes=np.asarray(boxes, np.float64)[order].reshape(-1, 4),
        keypoints=np.asarray(keypoints, np.float32)[order],
        classes=np.asarray(classes, np.int64)[order], crowd=np.asarray(crowd, bool)[order],
        ann_ids=np.asarray(ann_ids, np.int64)[order], areas=np.asarray(areas, np.float64)[order],
        num_keypoints=np.asarray(num_keypoints, np.int64)[order])


def repair_boxes(boxes: np.ndarray, keypoints: np.ndarray, min_side: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Replace ``(A, 4)`` xyxy boxes without area by the extent of their labelled ``(A, K, 3)`` keypoints.

    Returns ``(boxes, keep)``; ``keep (A,)`` is False where neither has sides of at least ``min_side``.
    """
    bad = ~((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    boxes = boxes.copy()
    for i in np.flatnonzero(bad):
        pts = keypoints[i][keypoints[i, :, 2] > 0, :2]
        if len(pts):
            boxes[i] = np.concatenate([pts.min(0), pts.max(0)])
    keep = ~bad | ((boxes[:, 2] - boxes[:, 0] >= min_side) & (boxes[:, 3] - boxes[:, 1] >= min_side))
    return boxes, keep
