"""Backgrounds, clutter, occluders and camera noise for the synthetic people dataset.

Everything here is "not a person": gradients, blotchy low-frequency colour, random shapes and lone
sticks that look a little like limbs, so a detector must learn the whole figure, not just "thick line".
"""
from __future__ import annotations

import cv2
import numpy as np

from yolopose.synthetic.figure import SHIFT, Color


def _color(rng: np.random.Generator) -> Color:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def make_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 BGR: a flat colour, a four-corner gradient or smooth colour blotches."""
    kind = rng.choice(3, p=[0.2, 0.4, 0.4])
    if kind == 0:
        return np.full((height, width, 3), _color(rng), np.uint8)
    cells = (2, 2) if kind == 1 else tuple(int(n) for n in rng.integers(3, 8, 2))
    grid = rng.integers(0, 256, (*cells, 3)).astype(np.float32)
    mean = grid.mean((0, 1))
    grid = (mean + (grid - mean) * rng.uniform(0.25, 0.9)).astype(np.uint8)  # tone down the contrast
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR if kind == 1 else cv2.INTER_CUBIC)


def draw_random_shape(rng: np.random.Generator, canvas: np.ndarray, centre: np.ndarray, size: float,
                      color: Color | tuple[int], line_type: int = cv2.LINE_AA) -> None:
    """Draw a filled rectangle, ellipse or blob polygon of about ``size`` pixels at centre (2,)."""
    kind = rng.integers(3)
    theta = rng.uniform(0, np.pi)
    if kind == 0:  # rotated rectangle
        w, h = size * rng.uniform(0.3, 1.0), size * rng.uniform(0.3, 1.0)
        pts = cv2.boxPoints(((float(centre[0]), float(centre[1])), (w, h), float(np.degrees(theta))))
    elif kind == 1:  # ellipse as a polygon
        a = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        axes = size * rng.uniform(0.2, 0.5, 2)
        local = np.stack([np.cos(a) * axes[0], np.sin(a) * axes[1]], 1)
        c, s = np.cos(theta), np.sin(theta)
        pts = centre + local @ np.array([[c, s], [-s, c]])
    else:  # irregular blob
        n = int(rng.integers(5, 10))
        a = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = size * rng.uniform(0.2, 0.55, n)
        pts = centre + np.stack([np.cos(a) * r, np.sin(a) * r], 1)
    cv2.fillPoly(canvas, [np.round(np.asarray(pts) * (1 << SHIFT)).astype(np.int32)], color, line_type, SHIFT)


def draw_clutter(rng: np.random.Generator, image: np.ndarray, count: int) -> None:
    """Draw ``count`` random shapes and sticks onto image (H, W, 3) in place."""
    h, w = image.shape[:2]
    for _ in range(count):
        centre = rng.uniform((0, 0), (w, h))
        size = min(w, h) * rng.uniform(0.05, 0.5)
        if rng.uniform() < 0.3:  # a lone limb-like stick
            end = centre + size * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
            pts = np.round(np.stack([centre, end]) * (1 << SHIFT)).astype(np.int32)
            thickness = max(1, int(size * rng.uniform(0.05, 0.25)))
            cv2.line(image, tuple(pts[0]), tuple(pts[1]), _color(rng), thickness, cv2.LINE_AA, SHIFT)
        else:
            draw_random_shape(rng, image, centre, size, _color(rng))


def draw_occluder(rng: np.random.Generator, image: np.ndarray, owner: np.ndarray, centre: np.ndarray,
                  size: float, owner_id: int) -> None:
    """Draw a random shape on image (H, W, 3) and mark its pixels ``owner_id`` in owner (H, W)."""
    color = _color(rng)
    state = rng.bit_generator.state
    draw_random_shape(rng, image, centre, size, color)
    rng.bit_generator.state = state  # replay the same draws for the mask
    draw_random_shape(rng, owner, centre, size, (owner_id,), cv2.LINE_8)


def finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Camera effects on the finished scene: contrast/brightness jitter, mild blur and sensor noise."""
    out = cv2.addWeighted(image, rng.uniform(0.8, 1.2), image, 0.0, rng.uniform(-20, 20))
    if rng.uniform() < 0.25:
        out = cv2.GaussianBlur(out, (3, 3), 0)
    if rng.uniform() < 0.7:
        amplitude = int(rng.integers(2, 15))
        out = cv2.add(out, rng.integers(-amplitude, amplitude + 1, out.shape, dtype=np.int16), dtype=cv2.CV_8U)
    return out
