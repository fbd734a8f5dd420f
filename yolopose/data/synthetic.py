"""The built-in synthetic people dataset: stick figures written to disk as a real COCO keypoints dataset.

``ensure_synthetic_dataset(config)`` generates ``train.json`` + ``train/*.jpg`` and ``val.json`` +
``val/*.jpg`` once into ``<root>/synthetic-<version>-<config hash>`` and reuses them afterwards. Every
image is drawn from its own random stream seeded by (seed, split, index), so a config always gives the
same bytes. ``python -m yolopose.data.synthetic --out DIR`` writes one anywhere, optionally with a
contact sheet of drawn annotations for a visual check.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from yolopose.data.coco_person import coco_person_category
from yolopose.data.synthetic_scene import PersonLabel, render_scene

SYNTHETIC_VERSION = "1"  # bump whenever generated content changes, so stale caches are not reused
MARKER = "COMPLETE"  # written last: its presence means the directory is whole
ASPECTS = ((4, 3), (3, 4), (1, 1))  # width:height of generated images
SPLITS = ("train", "val")
JPEG_QUALITY = 90

log = logging.getLogger(__name__)


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


@dataclass
class SyntheticPaths:
    """Where a generated dataset lives."""
    train_ann: Path
    train_images: Path
    val_ann: Path
    val_images: Path

    @classmethod
    def under(cls, directory: Path) -> SyntheticPaths:
        return cls(directory / "train.json", directory / "train", directory / "val.json", directory / "val")


def content_config(config: SyntheticConfig) -> dict:
    """The fields that decide the content (everything but where it is stored)."""
    return {k: v for k, v in asdict(config).items() if k != "root"}


def dataset_dir(config: SyntheticConfig) -> Path:
    """<root>/synthetic-<version>-<hash>: the cache directory for this config."""
    root = config.root or os.environ.get("YOLOPOSE_CACHE") or Path.home() / ".cache" / "yolopose"
    digest = hashlib.sha256(json.dumps(content_config(config), sort_keys=True).encode()).hexdigest()[:12]
    return Path(root).expanduser() / f"synthetic-{SYNTHETIC_VERSION}-{digest}"


def _annotation(label: PersonLabel, ann_id: int, image_id: int) -> dict:
    keypoints: list[float | int] = []
    for x, y, v in label.keypoints:
        keypoints += [round(float(x), 2), round(float(y), 2), int(v)] if v > 0 else [0, 0, 0]
    x0, y0 = round(float(label.bbox[0]), 2), round(float(label.bbox[1]), 2)
    x1, y1 = (round(float(label.bbox[i] + label.bbox[i + 2]), 2) for i in (0, 1))
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)], "area": float(label.area),
            "keypoints": keypoints, "num_keypoints": int((label.keypoints[:, 2] > 0).sum())}


def generate_split(config: SyntheticConfig, split: str, count: int, image_dir: Path) -> dict:
    """Render ``count`` images into image_dir; return the split's COCO keypoints dictionary."""
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
        aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
        scale = config.image_size / max(aw, ah)
        width, height = int(round(aw * scale)), int(round(ah * scale))
        image, labels = render_scene(rng, config, width, height)
        file_name = f"{index:06d}.jpg"
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {file_name}")
        (image_dir / file_name).write_bytes(jpeg.tobytes())
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for label in labels:
            annotations.append(_annotation(label, len(annotations) + 1, image_id))
    return {"info": {"description": f"yolopose synthetic people ({split})", "version": SYNTHETIC_VERSION,
                     "config": content_config(config)},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [coco_person_category()]}


def write_synthetic_dataset(out_dir: Path, config: SyntheticConfig) -> SyntheticPaths:
    """Write both splits (JSON + JPEGs) into out_dir, then the completion marker."""
    paths = SyntheticPaths.under(Path(out_dir))
    for split, count, ann, image_dir in (("train", config.num_train, paths.train_ann, paths.train_images),
                                         ("val", config.num_val, paths.val_ann, paths.val_images)):
        coco = generate_split(config, split, count, image_dir)
        ann.write_text(json.dumps(coco, separators=(",", ":")))
    (Path(out_dir) / MARKER).write_text(SYNTHETIC_VERSION + "\n")
    return paths


def ensure_synthetic_dataset(config: SyntheticConfig = SyntheticConfig()) -> SyntheticPaths:
    """Generate once into <root>/synthetic-<version>-<hash of config> and return the paths; reuse if complete.

    Safe for concurrent callers (DDP ranks): each generates into its own temporary sibling directory and
    renames it into place atomically; whoever loses the race discards its copy and uses the winner's.
    """
    final = dataset_dir(config)
    if (final / MARKER).is_file():
        return SyntheticPaths.under(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        log.info("generating synthetic people dataset into %s", final)
        write_synthetic_dataset(tmp, config)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MARKER).is_file():
                raise RuntimeError(f"{final} exists but is incomplete (no {MARKER}); delete it") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SyntheticPaths.under(final)


def main(argv: list[str] | None = None) -> None:
    """CLI: write a synthetic dataset to --out, optionally with a PNG contact sheet of annotations."""
    parser = argparse.ArgumentParser(prog="python -m yolopose.data.synthetic", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="directory to write the dataset into")
    parser.add_argument("--preview", type=Path, help="also write a contact sheet of val images here (PNG)")
    for f in fields(SyntheticConfig):
        if f.name != "root":
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    config = SyntheticConfig(**{f.name: getattr(args, f.name) for f in fields(SyntheticConfig) if f.name != "root"})
    paths = write_synthetic_dataset(args.out, config)
    print(f"wrote {config.num_train} train + {config.num_val} val images to {args.out}")
    if args.preview:
        from yolopose.data.synthetic_preview import contact_sheet
        cv2.imwrite(str(args.preview), contact_sheet(paths.val_ann, paths.val_images))
        print(f"wrote {args.preview}")


if __name__ == "__main__":
    main()


def scene_images(count: int, width: int, height: int, seed: int = 0, max_people: int = 6) -> list[np.ndarray]:
    """``count`` generated scenes with people as ``(height, width, 3) uint8 RGB`` images, without labels.

    Scene ``i`` is drawn from ``default_rng(seed + i)``: the same arguments always give the same pixels
    (the export check and the tests use these as realistic, reproducible inputs).
    """
    config = SyntheticConfig(max_people=max_people)
    return [np.ascontiguousarray(render_scene(np.random.default_rng(seed + i), config, width, height)[0][..., ::-1])
            for i in range(count)]
