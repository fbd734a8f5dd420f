"""Data pipeline throughput in ONE process (no DataLoader workers): images/second of the full training
pipeline (mosaic + affine + HSV + flip + collate, S x S output) without and with albumentations stages (the
default one; a heavy user one, Perspective + CoarseDropout), without HSV and with albumentations'
HueSaturationValue or ColorJitter in place of our HSV jitter, and of the validation pipeline (letterbox + collate), next to the JPEG-decode-only rate of
the same files measured in the same run.

By default it writes COCO-sized JPEGs (640x480, 640x427, 480x640) with natural-image-like texture and
random persons into a temp dir; ``--images DIR --ann FILE`` measures a real COCO keypoints split.
Numbers are per core unless ``--threads`` says otherwise (OpenCV and torch are pinned to it).

    python -m benchmarks.data_pipeline [--quick] [--profile] [--size 640] [--repeats 5] [--images DIR --ann FILE]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import Config, Table, load_note, machine_line, print_table, set_threads
from yolopose.data.albu import DEFAULT_ALBUMENTATIONS, AlbumentationsStage
from yolopose.data.augment import AugmentConfig
from yolopose.data.coco import CocoKeypoints
from yolopose.data.coco_person import coco_person_category
from yolopose.data.dataset import TrainDataset, ValDataset, collate

SHAPES = ((480, 640), (480, 640), (480, 640), (427, 640), (640, 480))
FORMER = "former pipeline (reference): default stage, partners from the whole split, three-channel HSV lookup"
HEAVY = [{"class_path": "Perspective", "init_args": {"scale": [0.05, 0.1], "fill": 114, "p": 0.5}},
         {"class_path": "CoarseDropout", "init_args": {"num_holes_range": [1, 8], "hole_height_range": [0.05, 0.15],
                                                       "hole_width_range": [0.05, 0.15], "fill": 114, "p": 0.5}}]
# albumentations' HSV at about our strengths (hue +-0.015 turn = +-3 of its 180), but additive saturation/value
ALBU_HSV = [{"class_path": "HueSaturationValue",
             "init_args": {"hue_shift_limit": 3, "sat_shift_limit": 70, "val_shift_limit": 40, "p": 1.0}}]
# the same kind of effect as ours: multiplicative brightness (value) and saturation, a small hue shift
ALBU_JITTER = [{"class_path": "ColorJitter", "init_args": {"brightness": [0.6, 1.4], "contrast": [1, 1],
                                                          "saturation": [0.3, 1.7], "hue": [-0.015, 0.015], "p": 1.0}}]
NO_HSV = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)


def natural_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Multi-octave smooth noise plus grain: decodes about as fast as a typical COCO photo."""
    img = np.full((h, w, 3), 120, np.float32)
    for octave, amp in ((4, 80), (16, 50), (64, 30), (256, 18)):
        small = rng.normal(0, 1, (max(2, h * octave // 640), max(2, w * octave // 640), 3)).astype(np.float32)
        img += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 4, (h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_dataset(root: Path, count: int, seed: int = 0) -> tuple[Path, Path]:
    """``count`` JPEGs (quality 90) + a COCO keypoints JSON with 1-6 random persons per image."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = SHAPES[i % len(SHAPES)]
        cv2.imwrite(str(root / "images" / f"{i:06d}.jpg"), natural_image(rng, h, w), [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": i + 1, "file_name": f"{i:06d}.jpg", "height": h, "width": w})
        for _ in range(int(rng.integers(1, 7))):
            bw, bh = rng.uniform(20, w / 2), rng.uniform(40, h * 0.9)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            kp = np.stack([rng.uniform(x, x + bw, 17), rng.uniform(y, y + bh, 17), rng.integers(0, 3, 17)], 1)
            kp[kp[:, 2] == 0, :2] = 0
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                "bbox": [x, y, bw, bh], "keypoints": kp.reshape(-1).round(2).tolist()})
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [coco_person_category()]}))
    return ann, root / "images"


def former_hsv_jitter(image: np.ndarray, gains: np.ndarray, bgr: bool = False) -> np.ndarray:
    """The HSV jitter before the plane-by-plane lookup (one three-channel ``cv2.LUT``): the reference row's."""
    x = np.arange(256, dtype=np.float64)
    lut = np.stack([(x + gains[0] * 256) % 256, np.clip(x * gains[1], 0, 255), np.clip(x * gains[2], 0, 255)], -1)
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV_FULL if bgr else cv2.COLOR_RGB2HSV_FULL)
    cv2.LUT(hsv, lut.astype(np.uint8).reshape(256, 1, 3), dst=hsv)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL, dst=image)


def with_former_hsv(run: Callable[[], int]) -> Callable[[], int]:
    """``run`` with the augmentation's HSV jitter swapped for ``former_hsv_jitter``."""
    import yolopose.data.augment as augment

    def wrapped() -> int:
        current = augment.hsv_jitter
        augment.hsv_jitter = former_hsv_jitter
        try:
            return run()
        finally:
            augment.hsv_jitter = current
    return wrapped


def interleaved_rates(fns: list[Callable[[], int]], repeats: int) -> list[tuple[float, list[float], float]]:
    """Median images/second of each of ``fns`` (each returns how many images it processed) after one warm-up:
    ``(median wall rate, all wall rates, median CPU-time rate)`` per function. Measured in rotation (one pass
    of each per round), so a load change on a shared machine hits every pipeline alike and their ratios hold.
    On a shared machine the CPU-time rate (this process's CPU seconds) is the steadier per-core figure; the
    wall rate is what a job sees."""
    for fn in fns:
        fn()
    walls: list[list[float]] = [[] for _ in fns]
    cpus: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, wall, cpu in zip(fns, walls, cpus):
            t, c = time.perf_counter(), time.process_time()
            n = fn()
            wall.append(n / (time.perf_counter() - t))
            cpu.append(n / (time.process_time() - c))
    return [(statistics.median(w), w, statistics.median(c)) for w, c in zip(walls, cpus)]


def pipeline_rows(reader: CocoKeypoints, items: int, size: int, batch: int,
                  repeats: int) -> tuple[list[list[object]], Callable[[], int]]:
    """Rows ``[pipeline, img/s, ms/img, spread, CPU img/s, x decode rate]`` for JPEG decode (the reference),
    the training and the validation pipeline over ``items`` images; also the training pass (for profiling)."""
    files = [reader.image_path(i % len(reader)) for i in range(items)]

    def train_set(stage: list[dict], buffer: int = 0, cache: int = 0, **cfg: float) -> TrainDataset:
        ds = TrainDataset(reader, size, AugmentConfig(**cfg), albumentations=AlbumentationsStage(stage, size)
                          if stage else None, mosaic_buffer=buffer, cache_bytes=cache)
        ds.seed(0)
        return ds
    train = train_set(DEFAULT_ALBUMENTATIONS)
    val = ValDataset(reader, size)

    def decode() -> int:
        for f in files:
            cv2.imdecode(np.fromfile(f, np.uint8), cv2.IMREAD_COLOR)
        return len(files)

    def batches(ds: TrainDataset | ValDataset) -> Callable[[], int]:
        def run() -> int:
            for start in range(0, items, batch):
                collate([ds[i % len(ds)] for i in range(start, min(start + batch, items))])
            return items
        return run

    pipelines = [("JPEG decode only (reference)", decode),
                 (FORMER, with_former_hsv(batches(train_set(DEFAULT_ALBUMENTATIONS, 0)))),
                 ("train: mosaic+affine+HSV+flip+collate, no albumentations", batches(train_set([]))),
                 ("train + default albumentations stage", batches(train)),
                 ("train + default albumentations stage, mosaic buffer 64 (the default), no RAM cache",
                  batches(train_set(DEFAULT_ALBUMENTATIONS, 64))),
                 ("train + default albumentations stage, mosaic buffer 64, RAM cache (the default for a split that "
                  "fits data.cache_gb)", batches(train_set(DEFAULT_ALBUMENTATIONS, 64, 2 * 10**9))),
                 ("train + Perspective + CoarseDropout (p 0.5 each)", batches(train_set(HEAVY))),
                 ("train, no HSV, no albumentations (HSV cost reference)", batches(train_set([], **NO_HSV))),
                 ("train, albumentations HueSaturationValue instead of our HSV", batches(train_set(ALBU_HSV, **NO_HSV))),
                 ("train, albumentations ColorJitter instead of our HSV", batches(train_set(ALBU_JITTER, **NO_HSV))),
                 ("val: letterbox+collate", batches(val))]
    results = list(zip([name for name, _ in pipelines], interleaved_rates([fn for _, fn in pipelines], repeats)))
    by_name = {name: r for name, r in results}
    ref, today = results[0][1][0], by_name[FORMER][2]
    no_hsv = by_name["train, no HSV, no albumentations (HSV cost reference)"][2]
    rows = [[name, f"{median:.1f}", f"{1000 / median:.2f}", f"{min(all_rates):.1f}-{max(all_rates):.1f}",
             f"{cpu:.1f}", f"{median / ref:.2f}", f"{cpu / today:.2f}" if name.startswith(("train", "former")) else "",
             f"{1000 / cpu - 1000 / no_hsv:+.2f}" if name.startswith("train") else ""]
            for name, (median, all_rates, cpu) in results]
    return rows, batches(train_set(DEFAULT_ALBUMENTATIONS, 64))


HEADER = ["pipeline", "img/s", "ms/img", "spread img/s", "CPU-time img/s", "x decode rate",
          "CPU-time x former pipeline", "CPU ms/img vs no HSV"]


def run(cfg: Config, count: int | None = None, items: int | None = None, size: int = 640, batch: int = 16,
        repeats: int | None = None) -> list[Table]:
    """The data-pipeline table on generated COCO-sized JPEGs (``python -m benchmarks --only data``)."""
    count = count or (16 if cfg.quick else 64)
    items = items or (32 if cfg.quick else 96)
    repeats = repeats or (3 if cfg.quick else 5)
    set_threads(cfg.threads)
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, load_note(notes):
        ann, image_dir = write_dataset(Path(tmp), count)
        rows, _ = pipeline_rows(CocoKeypoints(ann, image_dir), items, size, batch, repeats)
    return [Table(f"Data pipeline per worker ({cfg.threads} OpenCV/torch thread(s), no DataLoader; {count} generated "
                  f"COCO-sized JPEGs, {size}x{size} output, batch {batch}, median of {repeats} x {items} images)",
                  HEADER, rows,
                  [("A DataLoader worker runs exactly this loop: images/s per worker. The CPU-time rate (this "
                   "process's CPU seconds) is the steadier figure on a shared machine."), *notes])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="image folder of a real COCO keypoints split")
    parser.add_argument("--ann", type=Path, help="its annotation JSON")
    parser.add_argument("--count", type=int, default=64, help="generated images (default 64)")
    parser.add_argument("--items", type=int, default=96, help="items per timed pass (default 96)")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV/torch threads (default 1: per core)")
    parser.add_argument("--quick", action="store_true", help="16 images, 32 items, 3 repeats")
    parser.add_argument("--profile", action="store_true", help="cProfile one training pass")
    args = parser.parse_args()
    if args.quick:
        args.count, args.items, args.repeats = 16, 32, 3
    set_threads(args.threads)
    cfg = Config(quick=args.quick, threads=args.threads)
    print(machine_line(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        if not args.ann and not args.profile:
            for table in run(cfg, args.count, args.items, args.size, args.batch, args.repeats):
                print_table(table)
            return
        ann, image_dir = (args.ann, args.images) if args.ann else write_dataset(Path(tmp), args.count)
        notes: list[str] = []
        with load_note(notes):
            rows, train_pass = pipeline_rows(CocoKeypoints(ann, image_dir), args.items, args.size, args.batch,
                                             args.repeats)
        source = f"{args.ann}" if args.ann else f"{args.count} generated COCO-sized JPEGs"
        print_table(Table(f"Data pipeline per worker ({source}, {args.size}x{args.size}, batch {args.batch}, "
                          f"{args.threads} thread(s), median of {args.repeats} x {args.items} images)",
                          HEADER, rows, notes))
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(train_pass)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
            print("\ncProfile of one training pass (tottime):")
            lines = out.getvalue().splitlines()
            start = next(i for i, line in enumerate(lines) if "ncalls" in line)
            print("\n".join(lines[start:]))


if __name__ == "__main__":
    main()
