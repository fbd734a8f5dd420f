"""Compose one synthetic image: background, clutter, people, occluders, and their COCO-style labels.

Visibility follows COCO: a keypoint outside the image is unlabelled (v=0, x=y=0); inside, it is visible
(v=2) when its pixel still shows its own person after everything was drawn, otherwise it is labelled
but occluded (v=1) by a later (nearer) person or an occluder.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yolopose.synthetic.backdrop import draw_clutter, draw_occluder, finish, make_background
from yolopose.synthetic.config import SyntheticConfig
from yolopose.synthetic.figure import Figure, draw_figure, sample_figure

OVERLAP_PROB = 0.25  # chance that a person is placed partly in front of/behind an earlier one
OCCLUDER_ID = 255  # owner-map value of occluders; people use 1..max_people


@dataclass
class PersonLabel:
    """One annotated person: keypoints (K, 3) x, y, v; bbox (4,) x, y, w, h clipped to the image;
    area = silhouette pixels inside the image (the person's own drawn mask, before others cover it)."""
    keypoints: np.ndarray
    bbox: np.ndarray
    area: int


def _num_people(rng: np.random.Generator, max_people: int) -> int:
    """0..max_people, mostly 1-3: P(0) is small and P(n) decays by 0.8 per extra person."""
    weights = np.array([0.3] + [0.8 ** (n - 1) for n in range(1, max_people + 1)])
    return int(rng.choice(max_people + 1, p=weights / weights.sum()))


def _place(rng: np.random.Generator, size: np.ndarray, image_size: np.ndarray, truncate: bool,
           anchor: np.ndarray | None) -> np.ndarray:
    """Centre (2,) for a figure of extent size (2,) in an image of image_size (2,) = (W, H).

    Default: anywhere fully inside (centred with jitter when too big). anchor: next to that centre, so
    the two overlap. truncate: across a random border, with 15-75% of the figure cut off on that axis.
    """
    lo = np.minimum(size / 2, image_size - size / 2)
    hi = np.maximum(size / 2, image_size - size / 2)
    centre = rng.uniform(lo, hi)
    if anchor is not None:
        offset = size * np.array([rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.7), rng.uniform(-0.15, 0.15)])
        centre = np.clip(anchor + offset, lo, hi)
    if truncate:
        axis = int(rng.integers(2))
        inside = rng.uniform(-0.25, 0.35) * size[axis]
        centre[axis] = inside if rng.uniform() < 0.5 else image_size[axis] - inside
    return centre


def keypoint_labels(figure: Figure, owner: np.ndarray, owner_id: int) -> np.ndarray:
    """(K, 3) x, y, v with COCO visibility read off the final owner map (H, W)."""
    h, w = owner.shape
    xy = figure.keypoints
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
    out = np.zeros((len(xy), 3))
    for k in np.flatnonzero(inside):
        x, y = xy[k]
        shown = owner[int(round(y)), int(round(x))] == owner_id
        out[k] = (x, y, 2 if shown else 1)
    return out


def render_scene(rng: np.random.Generator, config: SyntheticConfig, width: int,
                 height: int) -> tuple[np.ndarray, list[PersonLabel]]:
    """Draw one scene; return the image (height, width, 3) uint8 BGR and its people's labels."""
    image_size = np.array([width, height], float)
    image = make_background(rng, width, height)
    draw_clutter(rng, image, int(rng.integers(0, 9)))
    owner = np.zeros((height, width), np.uint8)

    log_lo, log_hi = np.log(config.min_person_height * height), np.log(config.max_person_height * height)
    figures, centres = [], []
    for _ in range(_num_people(rng, config.max_people)):
        person_h = float(np.exp(rng.uniform(log_lo, log_hi)))
        figure = sample_figure(rng, person_h)
        ext = figure.extent()
        anchor = centres[int(rng.integers(len(centres)))] if centres and rng.uniform() < OVERLAP_PROB else None
        centre = _place(rng, ext[2:] - ext[:2], image_size, rng.uniform() < config.truncation_prob, anchor)
        centres.append(centre)
        figures.append((person_h, figure.moved(centre - (ext[:2] + ext[2:]) / 2)))
    figures.sort(key=lambda item: item[0])  # small (far) people first, nearer ones drawn over them

    boxes, areas = [], []
    for owner_id, (_, figure) in enumerate(figures, start=1):
        draw_figure(image, owner, figure, owner_id)
        box = np.clip(figure.extent(), 0, np.tile(image_size, 2))
        x0, y0 = np.floor(box[:2]).astype(int)
        x1, y1 = np.ceil(box[2:]).astype(int)
        boxes.append(box)
        areas.append(int(np.count_nonzero(owner[y0:y1, x0:x1] == owner_id)))

    for person_h, figure in figures:
        if rng.uniform() < config.occlusion_prob:
            target = figure.keypoints[int(rng.integers(len(figure.keypoints)))]
            centre = target + rng.normal(0.0, 0.05 * person_h, 2)
            draw_occluder(rng, image, owner, centre, person_h * rng.uniform(0.2, 0.45), OCCLUDER_ID)

    labels = []
    for owner_id, ((_, figure), box, area) in enumerate(zip(figures, boxes, areas), start=1):
        wh = box[2:] - box[:2]
        if area > 0 and wh.min() >= 1:
            labels.append(PersonLabel(keypoint_labels(figure, owner, owner_id),
                                      np.concatenate([box[:2], wh]), area))
    return finish(rng, image), labels


def scene_images(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` synthetic scenes with people, each ``(height, width, 3)`` uint8 RGB, for checks that need
    images a pose model reacts to (export parity, inference smoke tests), not for training.

    Image i is drawn from its own stream ``default_rng(seed + i)`` with the default ``SyntheticConfig``,
    so the same arguments always give the same pixels.
    """
    config = SyntheticConfig()
    return [np.ascontiguousarray(render_scene(np.random.default_rng(seed + i), config, width, height)[0][..., ::-1])
            for i in range(count)]
