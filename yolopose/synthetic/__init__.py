"""The built-in synthetic people dataset: stick figures drawn with COCO-style labels, written to disk as a
real COCO keypoints dataset (the demo's data), and a few rendered scenes for checks.

Modules, top down: ``generate`` (cache, dataset writer, ``python -m yolopose.synthetic``) -> ``scene``
(one image and its labels) -> ``figure`` (a posed person) and ``backdrop`` (background, clutter,
occluders); ``config`` holds ``SyntheticConfig``; ``preview`` draws annotations for a visual check.
It depends on the data layer only for the COCO person topology; the DataModule imports it lazily, for
``format: synthetic`` only.

Public API: ``SyntheticConfig``, ``ensure_synthetic_dataset``, ``write_synthetic_dataset``, ``scene_images``.
"""
from yolopose.synthetic.config import SyntheticConfig
from yolopose.synthetic.generate import SyntheticPaths, ensure_synthetic_dataset, write_synthetic_dataset
from yolopose.synthetic.scene import scene_images

__all__ = ["SyntheticConfig", "SyntheticPaths", "ensure_synthetic_dataset", "scene_images", "write_synthetic_dataset"]
