"""Draw a COCO keypoints dataset's annotations onto its images, for a quick visual check.

Colours: the person's left side blue, right side orange, the midline (nose) green; a filled dot is a
visible keypoint (v=2), a hollow ring a labelled but occluded one (v=1); boxes are white.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

LEFT, RIGHT, MIDDLE = (255, 120, 0), (0, 140, 255), (0, 200, 0)  # BGR


def _side_color(name: str) -> tuple[int, int, int]:
    return LEFT if name.startswith("left") else RIGHT if name.startswith("right") else MIDDLE


def draw_annotations(image: np.ndarray, annotations: list[dict], category: dict) -> np.ndarray:
    """A copy of image (H, W, 3) BGR with each annotation's box, skeleton and keypoints drawn.

    category: the COCO category entry (``keypoints`` names, 1-based ``skeleton`` pairs).
    """
    out = image.copy()
    names = category["keypoints"]
    for ann in annotations:
        x, y, w, h = ann["bbox"]
        cv2.rectangle(out, (int(x), int(y)), (int(round(x + w)), int(round(y + h))), (255, 255, 255), 1)
        kpts = np.asarray(ann["keypoints"], float).reshape(-1, 3)
        for a, b in category["skeleton"]:
            pa, pb = kpts[a - 1], kpts[b - 1]
            if pa[2] > 0 and pb[2] > 0:
                cv2.line(out, (int(round(pa[0])), int(round(pa[1]))), (int(round(pb[0])), int(round(pb[1]))),
                         _side_color(names[b - 1]), 1, cv2.LINE_AA)
        for name, (px, py, v) in zip(names, kpts):
            if v > 0:
                cv2.circle(out, (int(round(px)), int(round(py))), 2, _side_color(name), -1 if v == 2 else 1,
                           cv2.LINE_AA)
    return out


def contact_sheet(ann_file: Path, image_dir: Path, count: int = 12, columns: int = 4,
                  cell: int = 320) -> np.ndarray:
    """The first ``count`` images of a dataset, annotated, each in a cell x cell tile: (rows*cell, columns*cell, 3)."""
    coco = json.loads(Path(ann_file).read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images = coco["images"][:count]
    rows = max(1, -(-len(images) // columns))
    sheet = np.full((rows * cell, columns * cell, 3), 40, np.uint8)
    for i, info in enumerate(images):
        image = cv2.imread(str(Path(image_dir) / info["file_name"]))
        drawn = draw_annotations(image, by_image.get(info["id"], []), coco["categories"][0])
        scale = cell / max(drawn.shape[:2])
        drawn = cv2.resize(drawn, (int(drawn.shape[1] * scale), int(drawn.shape[0] * scale)))
        r, c = divmod(i, columns)
        sheet[r * cell:r * cell + drawn.shape[0], c * cell:c * cell + drawn.shape[1]] = drawn
    return sheet
