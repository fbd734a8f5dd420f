"""The COCO person keypoint topology (names and skeleton), as published with COCO 2017.

Used by the synthetic dataset generator and as a reference in tests; real datasets bring their own
names and skeleton in their ``categories`` entry.
"""
from __future__ import annotations

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)

COCO_SKELETON_1BASED: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
"""Limbs as 1-based keypoint index pairs, exactly as in COCO's ``categories[0]['skeleton']``."""


def coco_person_category(category_id: int = 1) -> dict:
    """A COCO ``categories`` entry for the person keypoint topology."""
    return {"id": category_id, "name": "person", "supercategory": "person",
            "keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": [list(p) for p in COCO_SKELETON_1BASED]}
