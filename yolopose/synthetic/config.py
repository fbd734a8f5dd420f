"""``SyntheticConfig``: what the synthetic people generator draws (a plain dataclass, no dependencies).

Kept apart from the generator so that the DataModule's ``synthetic:`` settings can be typed and parsed
without importing the drawing code, and so that the scene and the dataset writer share it without a circle.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SyntheticConfig:
    """What to generate. Defaults suit the CPU demo: a few thousand small images, generated in seconds."""
    root: str | None = None  # cache root; None -> $YOLOPOSE_CACHE or ~/.cache/yolopose
    num_train: int = 3000
    num_val: int = 250
    image_size: int = 320  # longest side of every image
    max_people: int = 6
    min_person_height: float = 0.15  # standing height as a fraction of the image height
    max_person_height: float = 0.9
    occlusion_prob: float = 0.25  # per person: chance of an occluder drawn over one of its joints
    truncation_prob: float = 0.2  # per person: chance of being placed across an image border
    seed: int = 0
