"""The data layer's shared vocabulary: the dataset's ``DatasetInfo``, the two records images travel in
(``Sample`` before augmentation, ``Item`` after), the default sigmas and flip pairs, and the
``DatasetError`` every reader raises for bad input.

Coordinate convention (all of yolopose's data layer): continuous pixel coordinates, pixel ``(i, j)``
covers ``[i, i+1) x [j, j+1)``; a keypoint at ``(x, y)`` lies in pixel ``(floor(x), floor(y))``. Boxes
and keypoints use the same frame, so a horizontal flip maps both with ``x -> W - x``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from yolopose.geometry import default_sigma_list


class DatasetError(ValueError):
    """Bad dataset input (annotation file, label file, config); the message names the file and the field."""


@dataclass
class DatasetInfo:
    """What the model and evaluation need to know about a keypoint dataset."""
    num_keypoints: int
    keypoint_names: list[str]
    skeleton: list[tuple[int, int]]  # 0-based keypoint index pairs
    flip_index: list[int]  # flip_index[k]: index of k's mirror partner (identity for unpaired points)
    sigmas: list[float]  # per-keypoint OKS sigmas, length K
    class_names: list[str]
    category_ids: list[int]  # COCO category id of each contiguous class index

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Sample:
    """A decoded image with its labels in original pixels, as a reader loads it (N objects, M crowds, K keypoints).

    ``image (H, W, 3) uint8 RGB``; ``boxes (N, 4) float32 xyxy``; ``keypoints (N, K, 3) float32 (x, y, v)``
    with v in {0, 1, 2} and x = y = 0 wherever v = 0; ``classes (N,) int64`` in 0..C-1; ``crowd_boxes
    (M, 4) float32 xyxy`` (ignore regions, never positives); ``orig_size`` is ``(h, w)``.
    """
    image: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray
    classes: np.ndarray
    crowd_boxes: np.ndarray
    image_id: int
    orig_size: tuple[int, int]


@dataclass
class Item:
    """A network input with its labels in input pixels, as augmentation or letterbox make it from a ``Sample``.

    ``image (S, S, 3) uint8 RGB``; ``boxes (N, 4) f32 xyxy``; ``keypoints (N, K, 3) f32``; ``classes (N,)
    i64``; ``crowd_boxes (M, 4) f32``; ``meta``: ``image_id``, ``orig_size (h, w)``, ``scale``, ``pad``
    with ``original = (input - pad) / scale`` (exact for letterboxed validation items); ``num_skipped``:
    attempts thrown away because an image could not be read, ``skipped_files``: those images (distinct).
    """
    image: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray
    classes: np.ndarray
    crowd_boxes: np.ndarray
    meta: dict
    num_skipped: int = 0
    skipped_files: tuple[str, ...] = ()


# --------------------------------------------------------------------------- flip pairs
_SIDE_TOKENS = {"left": "right", "right": "left", "l": "r", "r": "l"}


def _mirror_key(name: str) -> tuple[str, str]:
    """``(key, mirrored key)`` of a keypoint name; both equal when the name has no side."""
    tokens = [t for t in re.split(r"[\s_\-.]+", name.strip().lower()) if t]
    mirrored = [_SIDE_TOKENS.get(t, t) for t in tokens]
    if mirrored == tokens and tokens:  # glued prefix: "LeftEye", "righthand"
        m = re.fullmatch(r"(left|right)(.+)", tokens[0])
        if m:
            mirrored = [_SIDE_TOKENS[m.group(1)] + m.group(2)] + tokens[1:]
    return " ".join(tokens), " ".join(mirrored)


def flip_index_from_names(names: Sequence[str]) -> list[int]:
    """Mirror partners from left/right in the names (``left_eye``/``right_eye``, ``l_knee``/``r_knee``,
    ``Left Eye``/``right eye``, ``eye_l``/``eye_r``, ``LeftHand``/``RightHand``; case-insensitive).

    A name whose mirrored form is not among the names (or is ambiguous) keeps itself as partner.
    """
    keys = [_mirror_key(n) for n in names]
    where: dict[str, list[int]] = {}
    for i, (key, _) in enumerate(keys):
        where.setdefault(key, []).append(i)
    out = list(range(len(names)))
    for i, (key, mirrored) in enumerate(keys):
        partners = where.get(mirrored, [])
        if mirrored != key and len(partners) == 1 and len(where[key]) == 1:
            out[i] = partners[0]
    return out


def validate_flip_index(flip_index: Sequence[int], num_keypoints: int, source: str) -> list[int]:
    """Check that ``flip_index`` is a length-K involution (f[f[k]] == k); return it as a list of ints."""
    try:
        fi = [int(k) for k in flip_index]
    except (TypeError, ValueError):
        raise DatasetError(f"{source}: flip_index must be a list of integers, got {flip_index!r}") from None
    if len(fi) != num_keypoints:
        raise DatasetError(f"{source}: flip_index has {len(fi)} entries, expected {num_keypoints} (one per keypoint)")
    for k, p in enumerate(fi):
        if not 0 <= p < num_keypoints:
            raise DatasetError(f"{source}: flip_index[{k}] = {p} is out of range 0..{num_keypoints - 1}")
        if fi[p] != k:
            raise DatasetError(f"{source}: flip_index is not an involution: flip_index[{k}] = {p} "
                               f"but flip_index[{p}] = {fi[p]} (expected {k})")
    return fi


def resolve_sigmas(sigmas: Sequence[float] | None, num_keypoints: int, category_name: str, source: str) -> list[float]:
    """Configured sigmas (validated), else the defaults of ``geometry.default_sigma_list`` for this category."""
    if sigmas is None:
        return default_sigma_list(num_keypoints, category_name)
    out = [float(s) for s in sigmas]
    if len(out) != num_keypoints:
        raise DatasetError(f"{source}: sigmas has {len(out)} values, expected {num_keypoints} (one per keypoint)")
    for k, s in enumerate(out):
        if not (math.isfinite(s) and s > 0):
            raise DatasetError(f"{source}: sigmas[{k}] = {s} must be a positive finite number")
    return out


def empty_labels(num_keypoints: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes (0, 4), keypoints (0, K, 3), classes (0,), crowd_boxes (0, 4))`` with the right dtypes."""
    return (np.zeros((0, 4), np.float32), np.zeros((0, num_keypoints, 3), np.float32),
            np.zeros((0,), np.int64), np.zeros((0, 4), np.float32))


def clean_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """Normalise ``(..., K, 3)`` labels in place: v <= 0 -> 0, any positive v -> round(v) clipped to {1, 2};
    then x = y = 0 where v = 0. Returns the same array. Non-finite values must have been rejected before.
    """
    raw = keypoints[..., 2]
    v = np.where(raw > 0, np.clip(np.rint(raw), 1, 2), 0)
    keypoints[..., 2] = v
    keypoints[..., :2] *= (v > 0)[..., None]
    return keypoints
