"""Geometric and colour transforms on images and their labels (own code: albumentations'
HorizontalFlip does not swap left/right keypoints and flips keypoints at W-1-x but boxes at W-x, and its Mosaic
drops keypoints outside the image; its pixel-level and user-chosen transforms run after these, ``albu.py``).

Every geometric step is a 3x3 affine matrix in continuous pixel coordinates (see ``sample.py``); the
train pipeline composes mosaic placement, random affine and flip into ONE matrix per source image and
warps each image straight into the output (``render``), so pixels are resampled once. Labels go through
the same matrices, hence a keypoint stays on the pixel it was drawn on.

Label rules after a geometric transform to an S x S output:
- a box becomes the bounding box of its 4 transformed corners, clipped to the output; it is kept when
  both clipped sides are >= ``MIN_BOX_SIDE`` px and the clipped area is >= ``MIN_BOX_AREA_FRAC`` of the
  unclipped transformed area (a person mostly cut off is dropped, together with its keypoints);
- a keypoint outside ``[0, S)`` gets v = 0 and x = y = 0;
- crowd (ignore) boxes are transformed and clipped the same way, dropped only when empty.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from yolopose.data.sample import Item, Sample

FILL_VALUE = 114  # grey of padding and uncovered canvas, as in YOLOv5/YOLOX
MIN_BOX_SIDE = 2.0
MIN_BOX_AREA_FRAC = 0.1


# --------------------------------------------------------------------------- matrices
def translation(tx: float, ty: float) -> np.ndarray:
    """``(3, 3)`` shift by ``(tx, ty)`` pixels."""
    return np.array([[1.0, 0, tx], [0, 1, ty], [0, 0, 1]])


def scaling(sx: float, sy: float | None = None) -> np.ndarray:
    """``(3, 3)`` scale about the origin (``sy`` defaults to ``sx``)."""
    return np.diag([sx, sx if sy is None else sy, 1.0])


def hflip_matrix(width: float) -> np.ndarray:
    """``x -> width - x``: a horizontal flip of a ``width``-wide image in continuous coordinates."""
    return np.array([[-1.0, 0, width], [0, 1, 0], [0, 0, 1]])


def to_cv2(m: np.ndarray, x0: int = 0, y0: int = 0) -> np.ndarray:
    """``(2, 3)`` matrix for ``cv2.warpAffine`` (pixel-centre indices) from a continuous ``(3, 3)`` one,
    writing into an output whose pixel (0, 0) is the full output's pixel ``(x0, y0)``."""
    a = m[:2, :2]
    t = m[:2, 2] + 0.5 * a.sum(axis=1) - 0.5 - np.array([x0, y0])
    return np.concatenate([a, t[:, None]], axis=1)


def apply_points(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``(..., 2)`` points through the ``(3, 3)`` affine ``m``."""
    return xy @ m[:2, :2].T + m[:2, 2]


def footprint(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``(4,)`` xyxy bounding box of an ``(h, w)`` image under ``m``."""
    h, w = hw
    corners = apply_points(m, np.array([[0.0, 0], [w, 0], [0, h], [w, h]]))
    return np.concatenate([corners.min(0), corners.max(0)])


def visible(m: np.ndarray, hw: tuple[int, int], size: int) -> bool:
    """Whether an ``(h, w)`` image mapped by ``m`` covers any of the ``size x size`` output."""
    x0, y0, x1, y1 = footprint(m, hw)
    return x1 > 0 and y1 > 0 and x0 < size and y0 < size


# --------------------------------------------------------------------------- pixels
def render(parts: list[tuple[np.ndarray, np.ndarray]], size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw each ``(image (h, w, 3), matrix (3, 3))`` into one ``(size, size, 3)`` grey canvas.

    Returns the canvas and the matrices actually used, which the labels must go through: an
    axis-aligned matrix (scale, translation, horizontal flip) is done with ``cv2.resize`` on the visible
    crop, about 4x faster than ``cv2.warpAffine``, after moving its translation by < 0.5 px so the crop
    lands on whole output pixels. Other matrices are warped into their footprint's rectangle with a
    transparent border, so overlapping rectangles keep what earlier images drew and edges blend.
    """
    out = np.full((size, size, 3), FILL_VALUE, np.uint8)
    used = []
    for image, m in parts:
        if m[0, 1] == 0 and m[1, 0] == 0 and m[1, 1] > 0 and m[0, 0] != 0:
            used.append(_paste_scaled(out, image, m))
            continue
        used.append(m)
        x0, y0, x1, y1 = footprint(m, image.shape[:2])
        x0, y0 = max(math.floor(x0), 0), max(math.floor(y0), 0)
        x1, y1 = min(math.ceil(x1), size), min(math.ceil(y1), size)
        if x1 > x0 and y1 > y0:
            cv2.warpAffine(image, to_cv2(m, x0, y0), (x1 - x0, y1 - y0), dst=out[y0:y1, x0:x1],
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
    return out, used


def _source_span(a: float, t: float, n: int, size: int) -> tuple[int, int, float]:
    """For ``x -> a x + t`` on a source axis of n pixels: the source pixels ``[s0, s1)`` that can reach
    ``[0, size)`` (1 px margin) and the output position ``q = a s0 + t`` of the span's start."""
    lo, hi = sorted((-t / a, (size - t) / a))
    s0, s1 = max(math.floor(lo) - 1, 0), min(math.ceil(hi) + 1, n)
    return s0, s1, a * s0 + t


def _paste_scaled(out: np.ndarray, image: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Draw ``image`` under the axis-aligned ``m`` (``m[0, 0]`` < 0: mirrored) into ``out``; return ``m``
    with its translation snapped so the resized crop starts on whole pixels."""
    size = out.shape[0]
    a, d = m[0, 0], m[1, 1]
    sx0, sx1, qx = _source_span(a, m[0, 2], image.shape[1], size)
    sy0, sy1, qy = _source_span(d, m[1, 2], image.shape[0], size)
    m = m.copy()
    m[0, 2] += round(qx) - qx
    m[1, 2] += round(qy) - qy
    if round((sx1 - sx0) * abs(a)) < 1 or round((sy1 - sy0) * d) < 1:
        return m
    crop = cv2.resize(image[sy0:sy1, sx0:sx1], None, fx=abs(a), fy=d, interpolation=cv2.INTER_LINEAR)
    ch, cw = crop.shape[:2]
    x0 = round(qx) - (cw if a < 0 else 0)
    y0 = round(qy)
    ox0, oy0, ox1, oy1 = max(x0, 0), max(y0, 0), min(x0 + cw, size), min(y0 + ch, size)
    if ox1 > ox0 and oy1 > oy0:
        rows = slice(oy0 - y0, oy1 - y0)
        if a < 0:  # the crop's source start is its right end in the output: mirror its visible part into place
            cv2.flip(crop[rows, x0 + cw - ox1:x0 + cw - ox0], 1, dst=out[oy0:oy1, ox0:ox1])
        else:
            out[oy0:oy1, ox0:ox1] = crop[rows, ox0 - x0:ox1 - x0]
    return m


def hsv_jitter(image: np.ndarray, gains: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Shift hue by ``gains[0]`` turns and scale saturation / value by ``gains[1:]`` on a uint8 image,
    in place, through one 256-entry lookup table per channel. The result is RGB; the input is RGB, or
    BGR when ``bgr`` (the channel swap then comes free with the colour conversion).

    The tables are applied plane by plane (``cv2.split`` / ``cv2.merge``): OpenCV's single-channel LUT is
    vectorised, its three-channel one is not (1.6x slower for the same values; docs/benchmarks.md)."""
    x = np.arange(256, dtype=np.float64)
    tables = ((x + gains[0] * 256) % 256, np.clip(x * gains[1], 0, 255), np.clip(x * gains[2], 0, 255))
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV_FULL if bgr else cv2.COLOR_RGB2HSV_FULL)
    planes = [cv2.LUT(p, t.astype(np.uint8).reshape(256, 1)) for p, t in zip(cv2.split(hsv), tables)]
    return cv2.cvtColor(cv2.merge(planes), cv2.COLOR_HSV2RGB_FULL, dst=image)


# --------------------------------------------------------------------------- labels
def warp_boxes(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``(N, 4)`` xyxy -> bounding boxes of the 4 transformed corners, ``(N, 4)`` float32."""
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32)
    x = boxes[:, [0, 2, 0, 2]].astype(np.float64)  # (N, 4) corner x: x1 x2 x1 x2
    y = boxes[:, [1, 1, 3, 3]].astype(np.float64)  # corner y: y1 y1 y2 y2
    cx = x * m[0, 0] + y * m[0, 1] + m[0, 2]
    cy = x * m[1, 0] + y * m[1, 1] + m[1, 2]
    out = np.empty((len(boxes), 4), np.float32)
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = cx.min(1), cy.min(1), cx.max(1), cy.max(1)
    return out


def warp_keypoints(keypoints: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``(N, K, 3)`` -> labelled points (v > 0) moved by ``m``; unlabelled ones stay (0, 0, 0)."""
    out = keypoints.copy()
    labelled = out[..., 2] > 0
    out[..., :2] = np.where(labelled[..., None], apply_points(m, out[..., :2]), 0)
    return out


def filter_labels(boxes: np.ndarray, keypoints: np.ndarray, classes: np.ndarray, crowd: np.ndarray,
                  size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clip/drop transformed labels to a ``size x size`` output (rules in the module docstring).

    Shapes in and out: ``boxes (N, 4)``, ``keypoints (N, K, 3)``, ``classes (N,)``, ``crowd (M, 4)``.
    """
    clipped = boxes.clip(0, size)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    full = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (w >= MIN_BOX_SIDE) & (h >= MIN_BOX_SIDE) & (w * h >= MIN_BOX_AREA_FRAC * full)
    kp = keypoints[keep]
    outside = ((kp[..., 0] < 0) | (kp[..., 0] >= size) | (kp[..., 1] < 0) | (kp[..., 1] >= size))
    kp[outside] = 0
    crowd = crowd.clip(0, size)
    crowd = crowd[(crowd[:, 2] - crowd[:, 0] >= 1) & (crowd[:, 3] - crowd[:, 1] >= 1)]
    return clipped[keep], kp, classes[keep], crowd


def swap_left_right(keypoints: np.ndarray, flip_index: np.ndarray) -> np.ndarray:
    """``(N, K, 3)`` with each keypoint moved to its mirror partner's slot (after a horizontal flip)."""
    return keypoints[:, flip_index]


# --------------------------------------------------------------------------- validation
def letterbox_scale(hw: tuple[int, int], size: int) -> float:
    """Scale that fits an ``(h, w)`` image into ``size x size`` keeping its aspect ratio."""
    return min(size / hw[0], size / hw[1])


def letterbox_placement(hw: tuple[int, int], size: int) -> np.ndarray:
    """Matrix that scales an ``(h, w)`` image to fit ``size x size`` and centres it (exact, sub-pixel offset)."""
    h, w = hw
    r = letterbox_scale(hw, size)
    return translation((size - w * r) / 2, (size - h * r) / 2) @ scaling(r)


def letterbox(sample: Sample, size: int) -> Item:
    """Resize (aspect kept) and centre-pad to ``size x size``; labels follow; meta maps back exactly.

    ``cv2.resize`` with ``fx = fy = scale`` uses exactly that scale (the output size is rounded, the
    mapping is not), so ``original = (input - pad) / scale`` holds to sub-pixel precision.
    """
    exact = letterbox_placement(sample.image.shape[:2], size)
    r = float(exact[0, 0])
    image = sample.image
    if r != 1.0:
        # Bilinear like the training pipeline: validation and deployment see what training saw.
        image = cv2.resize(image, None, fx=r, fy=r, interpolation=cv2.INTER_LINEAR)
    nh, nw = image.shape[:2]
    # The training pipeline's placement rounded to whole pixels as ``_paste_scaled`` rounds it, so an image
    # without augmentation is the same input in training and validation.
    px, py = round(exact[0, 2]), round(exact[1, 2])
    out = np.full((size, size, 3), FILL_VALUE, np.uint8)
    out[py:py + nh, px:px + nw] = image
    m = translation(px, py) @ scaling(r)
    boxes, keypoints, classes, crowd = filter_labels(
        warp_boxes(sample.boxes, m), warp_keypoints(sample.keypoints, m), sample.classes,
        warp_boxes(sample.crowd_boxes, m), size)
    meta = {"image_id": sample.image_id, "orig_size": sample.orig_size, "scale": r, "pad": (px, py)}
    return Item(out, boxes, keypoints, classes, crowd, meta)


def preprocess(image: np.ndarray, size: int, image_id: int = 0) -> tuple[np.ndarray, dict]:
    """``(H, W, 3) uint8 RGB`` -> network input ``(3, S, S) float32`` in [0, 1] and the letterbox ``meta``.

    The same ``letterbox`` as validation; ``meta`` holds ``image_id``, ``orig_size (h, w)``, ``scale`` and
    ``pad`` (``input = original * scale + pad``). Used by inference and by the export check.
    """
    h, w = image.shape[:2]
    sample = Sample(np.ascontiguousarray(image), np.zeros((0, 4), np.float32), np.zeros((0, 1, 3), np.float32),
                    np.zeros(0, np.int64), np.zeros((0, 4), np.float32), image_id, (h, w))
    item = letterbox(sample, size)
    return item.image.transpose(2, 0, 1).astype(np.float32) / 255.0, item.meta
