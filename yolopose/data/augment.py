"""The training augmentation: mosaic of 4, random affine, flip with left/right swap, HSV jitter.

``TrainAugment.plan`` draws every random number from the caller's ``numpy.random.Generator`` and needs
only the source images' sizes; ``apply`` then does the work. Planning first lets the dataset skip
decoding mosaic tiles that the random crop leaves out of view (~10% of them with the defaults).

Geometry (continuous pixels, S = output size), following the YOLOv5 mosaic: each image is scaled so its
longer side is S; the four sit around a random centre ``(xc, yc) ~ U(S/2, 3S/2)^2`` of a 2S x 2S canvas
(top-left, top-right, bottom-left, bottom-right); the random affine maps the canvas centre to
``(0.5 +- translate) * S`` with rotation, scale and shear about it; the flip mirrors the output. Unlike
a real canvas nothing is cropped at the 2S border, so at small scales the output may show a little more
of the tiles instead of grey. Without mosaic the single image is letterboxed to S x S first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from yolopose.data.sample import Sample
from yolopose.data.transforms import (Item, filter_labels, hflip_matrix, hsv_jitter, letterbox_placement, render,
                                      scaling, swap_left_right, translation, visible, warp_boxes, warp_keypoints)


@dataclass
class AugmentConfig:
    """Augmentation strengths (the YOLOv5/YOLOv8 pose defaults)."""
    mosaic: float = 1.0  # probability of a 4-image mosaic
    degrees: float = 0.0  # rotation ~ U(-degrees, degrees)
    translate: float = 0.1  # centre shift ~ U(-translate, translate) * S
    scale: tuple[float, float] = (0.5, 1.5)  # zoom range
    shear: float = 0.0  # shear angle ~ U(-shear, shear) degrees
    hsv_h: float = 0.015  # hue shift ~ U(-hsv_h, hsv_h) turns
    hsv_s: float = 0.7  # saturation gain ~ 1 + U(-hsv_s, hsv_s)
    hsv_v: float = 0.4  # value gain ~ 1 + U(-hsv_v, hsv_v)
    fliplr: float = 0.5  # horizontal flip probability
    flip_swap: bool = True  # swap left/right keypoints on flip (False only for the ablation)


@dataclass
class Plan:
    """Everything random about one training item: one ``(3, 3)`` matrix per source image (source pixels
    -> output pixels), whether it is flipped, and the HSV gains ``(3,)`` (None: no colour change)."""
    matrices: list[np.ndarray]
    flipped: bool
    hsv_gains: np.ndarray | None


def mosaic_placements(rng: np.random.Generator, sizes: list[tuple[int, int]], size: int) -> list[np.ndarray]:
    """Matrices placing 4 ``(h, w)`` images around a random centre of the 2S canvas."""
    xc, yc = rng.uniform(size / 2, 3 * size / 2, 2)
    out = []
    for quadrant, (h, w) in enumerate(sizes):
        r = size / max(h, w)
        x0 = xc - w * r if quadrant in (0, 2) else xc
        y0 = yc - h * r if quadrant in (0, 1) else yc
        out.append(translation(x0, y0) @ scaling(r))
    return out


def random_affine(rng: np.random.Generator, cfg: AugmentConfig, size: int, centre: float) -> np.ndarray:
    """Canvas -> output: move ``(centre, centre)`` to the origin, rotate/scale/shear, move to a random
    point near the output centre."""
    angle = math.radians(rng.uniform(-cfg.degrees, cfg.degrees))
    s = rng.uniform(*cfg.scale)
    shx, shy = np.tan(np.radians(rng.uniform(-cfg.shear, cfg.shear, 2)))
    tx, ty = rng.uniform(0.5 - cfg.translate, 0.5 + cfg.translate, 2) * size
    rot = np.array([[math.cos(angle), math.sin(angle), 0], [-math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    shear = np.array([[1, shx, 0], [shy, 1, 0], [0, 0, 1.0]])
    return translation(tx, ty) @ shear @ rot @ scaling(s) @ translation(-centre, -centre)


class TrainAugment:
    """Training pipeline on 1 or 4 ``Sample``s -> one ``Item`` of ``size x size``.

    Args:
        size: output side S.
        cfg: augmentation strengths.
        flip_index: ``(K,)`` mirror partner of each keypoint.
    """

    def __init__(self, size: int, cfg: AugmentConfig, flip_index: list[int]) -> None:
        self.size = size
        self.cfg = cfg
        self.flip_index = np.asarray(flip_index, np.int64)

    def plan(self, rng: np.random.Generator, sizes: list[tuple[int, int]]) -> Plan:
        """Draw the random parameters for source images of ``(h, w)`` sizes (1, or 4 for a mosaic)."""
        s, cfg = self.size, self.cfg
        if len(sizes) == 4:
            placements, centre = mosaic_placements(rng, sizes, s), float(s)
        elif len(sizes) == 1:
            placements, centre = [letterbox_placement(sizes[0], s)], s / 2
        else:
            raise ValueError(f"expected 1 or 4 images, got {len(sizes)}")
        affine = random_affine(rng, cfg, s, centre)
        flipped = bool(rng.random() < cfg.fliplr)
        if flipped:
            affine = hflip_matrix(s) @ affine
        gains = rng.uniform(-1, 1, 3) * np.array([cfg.hsv_h, cfg.hsv_s, cfg.hsv_v]) + np.array([0, 1, 1])
        use_hsv = cfg.hsv_h or cfg.hsv_s or cfg.hsv_v
        return Plan([affine @ p for p in placements], flipped, gains if use_hsv else None)

    def needed(self, plan: Plan, sizes: list[tuple[int, int]]) -> list[bool]:
        """Which source images show up in the output at all (the others need not be decoded)."""
        return [visible(m, hw, self.size) for m, hw in zip(plan.matrices, sizes)]

    def apply(self, plan: Plan, samples: list[Sample | None], bgr: bool = False) -> Item:
        """Render the planned item; ``None`` stands for a source image that is out of view.

        ``bgr``: the samples' images are BGR (as decoded); the item's image is RGB either way.
        """
        parts = [(smp, m) for smp, m in zip(samples, plan.matrices) if smp is not None]
        image, matrices = render([(smp.image, m) for smp, m in parts], self.size)
        parts = [(smp, m) for (smp, _), m in zip(parts, matrices)]
        if plan.hsv_gains is not None:
            hsv_jitter(image, plan.hsv_gains, bgr)
        elif bgr:
            cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
        boxes = np.concatenate([warp_boxes(smp.boxes, m) for smp, m in parts])
        keypoints = np.concatenate([warp_keypoints(smp.keypoints, m) for smp, m in parts])
        crowd = np.concatenate([warp_boxes(smp.crowd_boxes, m) for smp, m in parts])
        classes = np.concatenate([smp.classes for smp, _ in parts])
        boxes, keypoints, classes, crowd = filter_labels(boxes, keypoints, classes, crowd, self.size)
        if plan.flipped and self.cfg.flip_swap:
            keypoints = swap_left_right(keypoints, self.flip_index)
        first, m = parts[0]
        meta = {"image_id": first.image_id, "orig_size": first.orig_size,
                "scale": math.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])), "pad": (float(m[0, 2]), float(m[1, 2]))}
        return Item(image, boxes, keypoints, classes, crowd, meta)
