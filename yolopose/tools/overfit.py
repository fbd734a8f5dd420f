"""Overfit check on real data: can the model learn a handful of annotated images?

    python -m yolopose.tools.overfit --ann annotations.json --images image_dir [--target 0.95] [train.py flags]

Trains with the shipped ``overfit`` config (no augmentation, validation on the training images themselves)
through the real ``train.py`` pipeline - reader, letterbox, loss, decode, NMS, pycocotools - and stops as
soon as the keypoint AP on those images reaches ``--target``. Reaching ~1.0 shows that the annotations
are read correctly (K, skeleton, flip pairs, sigmas, visibility) and that the whole chain can fit them;
failing to get there on a few images points at a data or pipeline problem long before a real run would.
Any other ``train.py`` flag may follow (e.g. ``--model.variant s --data.image_size 640``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from yolopose.cli import main as train_main

CONFIG = "overfit"  # a shipped config, found by name (configs/overfit.yaml)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The tool's own flags, and the rest (passed on to ``train.py fit``)."""
    p = argparse.ArgumentParser(prog="python -m yolopose.tools.overfit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ann", required=True, help="COCO keypoints JSON of the images to overfit (a handful)")
    p.add_argument("--images", required=True, help="folder that the JSON's file_name entries are relative to")
    p.add_argument("--target", type=float, default=0.95, help="stop when val/kpt_AP reaches this (default 0.95)")
    p.add_argument("--out", default="runs/overfit", help="where logs and checkpoints go")
    return p.parse_known_args(argv)


def train_args(a: argparse.Namespace, extra: list[str]) -> list[str]:
    """The ``train.py fit`` arguments of the check: the same file for training and validation."""
    return ["fit", "--config", CONFIG,
            "--data.train_ann", a.ann, "--data.train_images", a.images,
            "--data.val_ann", a.ann, "--data.val_images", a.images,
            "--trainer.default_root_dir", a.out,
            "--trainer.callbacks.init_args.stopping_threshold", str(a.target), *extra]


def main(argv: list[str] | None = None) -> int:
    """Train on the images until ``--target`` keypoint AP; 0 when reached, 1 when not."""
    a, extra = parse(sys.argv[1:] if argv is None else argv)
    train_main(train_args(a, extra))
    runs = sorted(Path(a.out).glob("lightning_logs/version_*/metrics.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        print("overfit check: no validation ran", file=sys.stderr)
        return 1
    metrics = json.loads(runs[-1].read_text())
    reached = metrics["kpt_AP"] >= a.target
    print(f"overfit check: kpt_AP {metrics['kpt_AP']:.3f} (box_AP {metrics['box_AP']:.3f}) on the training images "
          f"after {metrics['epoch'] + 1} epochs: {'PASSED' if reached else 'NOT reached'} (target {a.target})")
    return 0 if reached else 1


if __name__ == "__main__":
    raise SystemExit(main())
