"""Shared fixtures of the data tests: tiny keypoint datasets (K = 5) that the tests write themselves,
as COCO JSON + PNG folders and as the same labels in the Ultralytics YOLO-pose txt layout."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import pytest
import torch
import yaml

from yolopose.synthetic import SyntheticConfig, ensure_synthetic_dataset

from tiny_run import TINY_DATA

KPT_NAMES = ["nose", "left_eye", "right_eye", "left_wrist", "right_wrist"]
SKELETON_1BASED = [[1, 2], [1, 3], [2, 4], [3, 5]]


@pytest.fixture
def people_coco() -> Callable[..., dict]:
    """``people_coco(sizes, seed=0) -> dict``: a COCO keypoints dict (category id 1 ``person``, K = 5), image
    i has ``sizes[i] = (h, w)``, id ``i + 1``, file ``{id:06d}.png`` and 1-3 fully inside persons with
    random visibilities (at least one labelled point each)."""
    def make(sizes: list[tuple[int, int]], seed: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        images, annotations = [], []
        for i, (h, w) in enumerate(sizes):
            images.append({"id": i + 1, "file_name": f"{i + 1:06d}.png", "height": h, "width": w})
            for _ in range(int(rng.integers(1, 4))):
                bw, bh = rng.uniform(0.2, 0.5) * w, rng.uniform(0.3, 0.6) * h
                x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                v = rng.choice([0, 1, 2], len(KPT_NAMES), p=[0.2, 0.2, 0.6])
                v[0] = 2
                kp = np.stack([rng.uniform(x, x + bw, len(v)), rng.uniform(y, y + bh, len(v)), v], 1)
                kp[v == 0, :2] = 0
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                                    "iscrowd": 0, "bbox": [x, y, bw, bh], "area": bw * bh,
                                    "num_keypoints": int((v > 0).sum()), "keypoints": kp.reshape(-1).tolist()})
        category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KPT_NAMES),
                    "skeleton": SKELETON_1BASED}
        return {"images": images, "annotations": annotations, "categories": [category]}
    return make


def _write_pixels(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)


@pytest.fixture
def write_coco(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """``write_coco(coco, name="train") -> (ann_file, image_dir)``: the JSON as ``tmp_path/name.json`` and a
    noise PNG of the declared size for every ``images`` entry under ``tmp_path/name/``."""
    def write(coco: dict, name: str = "train") -> tuple[Path, Path]:
        image_dir = tmp_path / name
        image_dir.mkdir(parents=True, exist_ok=True)
        for im in coco["images"]:
            _write_pixels(image_dir / im["file_name"], im["height"], im["width"], im["id"])
        ann = tmp_path / f"{name}.json"
        ann.write_text(json.dumps(coco))
        return ann, image_dir
    return write


@pytest.fixture
def write_yolo(tmp_path: Path) -> Callable[..., Path]:
    """``write_yolo({"train": coco, "val": coco}) -> data YAML``: the same images (same noise PNGs as
    ``write_coco``) and non-crowd labels in the Ultralytics layout ``yolo/images/<split>/``,
    ``yolo/labels/<split>/``, normalised by the image size."""
    def write(splits: dict[str, dict]) -> Path:
        root = tmp_path / "yolo"
        for split, coco in splits.items():
            k = len(coco["categories"][0]["keypoints"])
            for im in coco["images"]:
                h, w = im["height"], im["width"]
                _write_pixels(root / "images" / split / im["file_name"], h, w, im["id"])
                lines = []
                for a in coco["annotations"]:
                    if a["image_id"] != im["id"] or a.get("iscrowd"):
                        continue
                    x, y, bw, bh = a["bbox"]
                    kp = np.array(a["keypoints"], np.float64).reshape(k, 3) / [w, h, 1]
                    values = [(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h, *kp.reshape(-1)]
                    lines.append(" ".join(["0"] + [f"{v:.9f}" for v in values]))
                label = root / "labels" / split / Path(im["file_name"]).with_suffix(".txt")
                label.parent.mkdir(parents=True, exist_ok=True)
                label.write_text("\n".join(lines) + "\n")
        first = next(iter(splits.values()))["categories"][0]
        names = first["keypoints"]
        flip = [names.index(n.replace("left", "right")) if "left" in n else
                names.index(n.replace("right", "left")) if "right" in n else i for i, n in enumerate(names)]
        cfg = {"path": ".", **{s: f"images/{s}" for s in splits}, "kpt_shape": [len(names), 3], "flip_idx": flip,
               "names": {0: first["name"]}, "kpt_names": {0: names},
               "skeleton": [[a - 1, b - 1] for a, b in first["skeleton"]]}
        yaml_path = root / "data.yaml"
        yaml_path.write_text(yaml.safe_dump(cfg))
        return yaml_path
    return write


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run as fast on one thread, and one thread is immune to OpenMP's spin-waiting, which
    made a 1-step fit 80x slower (15 s) on 2 threads while another job kept both cores busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic dataset of ``tiny_run.tiny_config``, built once per test module."""
    root = tmp_path_factory.mktemp("cache")
    ensure_synthetic_dataset(SyntheticConfig(root=str(root), **TINY_DATA))
    return root
