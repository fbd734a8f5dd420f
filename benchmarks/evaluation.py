"""COCO evaluation cost: what validation adds around pycocotools, on 1k / 5k images of predictions.

    python -m benchmarks.evaluation [--quick] [--images 1000,5000] [--dets 20] [--repeats 3]

Ground truth: COCO-sized images (640 x 480 ...) with 1-6 people, K = 17. Predictions: per image, the GT
people jittered by a few pixels plus false positives, ``--dets`` detections per image in all, handed
over as ``Detections`` of a 640 x 640 letterboxed input (what validation produces).

Rows, each timed on the same records:
- ``detections_to_records``: Detections + letterbox meta -> COCO result dicts (validation does this per image);
- ``pycocotools keypoints only``: ``loadRes`` + ``COCOeval('keypoints')`` evaluate/accumulate/summarize: the
  floor of any keypoint AP;
- ``pycocotools keypoints + bbox``: the same plus a full ``COCOeval('bbox')``: the floor of computing both the
  way the evaluator used to;
- ``CocoEvaluator.evaluate``: ours (``kpt_AP..`` + ``box_AP``, ``box_AP50``, on the whole split and again on the
  images with a labelled instance);
- ``CocoEvaluator.evaluate, whole split only``: the same without the second image set (its cost).
pycocotools is pure Python and single-threaded: ``--threads`` does not change it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import time

import numpy as np
import torch

from benchmarks.common import Config, Table, load_note, print_table

K = 17
SIZE = 640
SHAPES = ((480, 640), (480, 640), (427, 640), (640, 480), (640, 427))


def make_dataset(num_images: int, dets: int, seed: int = 0) -> tuple[dict, list, list[dict]]:
    """``(gt, detections, metas)``: COCO GT dict, one ``Detections`` per image (input pixels of a 640 letterbox)
    and its letterbox meta."""
    from yolopose.geometry import default_sigmas
    from yolopose.postprocess import Detections

    rng = np.random.default_rng(seed)
    sig = default_sigmas(K).numpy()
    images, anns, detections, metas = [], [], [], []
    for i in range(num_images):
        h, w = SHAPES[i % len(SHAPES)]
        scale = SIZE / max(h, w)
        pad = ((SIZE - w * scale) / 2, (SIZE - h * scale) / 2)
        images.append({"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "height": h, "width": w})
        people = []
        for _ in range(int(rng.integers(1, 7))):
            bw, bh = rng.uniform(16, w * 0.6), rng.uniform(32, h * 0.9)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            v = rng.choice([0, 1, 2], K, p=[0.25, 0.15, 0.6])
            kp = np.stack((rng.uniform(x, x + bw, K) * (v > 0), rng.uniform(y, y + bh, K) * (v > 0), v), 1)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [x, y, bw, bh], "area": bw * bh, "num_keypoints": int((v > 0).sum()),
                         "keypoints": kp.reshape(-1).tolist()})
            people.append((x, y, bw, bh, kp))
        boxes, kpts, scores = [], [], []
        for j in range(dets):
            if j < len(people):                       # a true positive: GT jittered by ~OKS-sized noise
                x, y, bw, bh, kp = people[j]
                noise = rng.normal(0, 1, (K, 2)) * sig[:, None] * np.sqrt(bw * bh) * rng.uniform(0.5, 2)
                kxy = np.where(kp[:, 2:] > 0, kp[:, :2], rng.uniform((x, y), (x + bw, y + bh), (K, 2))) + noise
                box = [x + rng.normal(0, 3), y + rng.normal(0, 3), bw * rng.uniform(0.9, 1.1), bh * rng.uniform(0.9, 1.1)]
                score = rng.uniform(0.3, 1.0)
            else:                                     # a false positive somewhere in the image
                bw, bh = rng.uniform(10, w / 2), rng.uniform(20, h / 2)
                x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                kxy = rng.uniform((x, y), (x + bw, y + bh), (K, 2))
                box, score = [x, y, bw, bh], rng.uniform(0.001, 0.5)
            bx = np.array([box[0], box[1], box[0] + box[2], box[1] + box[3]])
            boxes.append(bx * scale + np.array([pad[0], pad[1], pad[0], pad[1]]))
            kpts.append(np.concatenate((kxy * scale + np.array(pad), rng.uniform(0, 1, (K, 1))), 1))
            scores.append(score)
        order = np.argsort(scores)[::-1]
        boxes_t, scores_t, kpts_t = (torch.tensor(np.asarray(a)[order], dtype=torch.float32)
                                     for a in (boxes, scores, kpts))
        detections.append(Detections(torch.tensor(dets), boxes_t, scores_t, torch.zeros(dets, dtype=torch.long),
                                     kpts_t))
        metas.append({"image_id": i + 1, "orig_size": (h, w), "scale": scale, "pad": pad})
    cat = {"id": 1, "name": "person", "supercategory": "person", "keypoints": [f"k{j}" for j in range(K)],
           "skeleton": []}
    return {"images": images, "annotations": anns, "categories": [cat]}, detections, metas


def _pycocotools(gt_coco, records: list[dict], iou_types: tuple[str, ...], sigmas: np.ndarray) -> list[float]:
    from pycocotools.cocoeval import COCOeval

    stats = []
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt_coco.loadRes(records)
        for iou_type in iou_types:
            ev = COCOeval(gt_coco, dt, iou_type)
            if iou_type == "keypoints":
                ev.params.kpt_oks_sigmas = sigmas
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats += list(ev.stats)
    return stats


def _time_steps(gt: dict, detections: list, metas: list[dict], repeats: int) -> tuple[int, dict, dict]:
    """``(records, wall times, CPU times)`` of each evaluation step on one data set, run round-robin."""
    from pycocotools.coco import COCO

    from yolopose.evaluation import CocoEvaluator, detections_to_records
    from yolopose.geometry import default_sigmas

    sigmas = default_sigmas(K).numpy().astype(np.float64)
    with contextlib.redirect_stdout(io.StringIO()):
        gt_coco = COCO()
        gt_coco.dataset = copy.deepcopy(gt)
        gt_coco.createIndex()
    evaluator = CocoEvaluator(gt, sigmas)
    whole_only = CocoEvaluator(gt, sigmas)
    whole_only.labelled_ids = set()         # no second image set to accumulate

    def build(_: object = None) -> list[dict]:
        return [r for det, meta in zip(detections, metas) for r in detections_to_records(det, meta, [1])]

    records = build()

    def fresh() -> list[dict]:          # loadRes writes into the dicts: an untimed copy for each run
        return copy.deepcopy(records)

    steps = [("detections_to_records", build, None),
             ("pycocotools keypoints only (floor)", lambda r: _pycocotools(gt_coco, r, ("keypoints",), sigmas), fresh),
             ("pycocotools keypoints + bbox", lambda r: _pycocotools(gt_coco, r, ("keypoints", "bbox"), sigmas), fresh),
             ("CocoEvaluator.evaluate (ours)", lambda _: evaluator.evaluate(records), None),
             ("CocoEvaluator.evaluate, whole split only", lambda _: whole_only.evaluate(records), None)]
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for _ in range(repeats):          # round-robin: every step sees the same machine load
        for name, fn, prepare in steps:
            arg = prepare() if prepare else None
            t0, c0 = time.perf_counter(), time.process_time()
            fn(arg)
            wall.setdefault(name, []).append(time.perf_counter() - t0)
            cpu.setdefault(name, []).append(time.process_time() - c0)
    return len(records), wall, cpu


def eval_rows(sizes: list[int], dets: int, repeats: int) -> list[list[object]]:
    """Rows ``[images, records, step, s, spread, CPU s, CPU ms/image, x floor]`` for each number of images."""
    rows = []
    for n in sizes:
        n_records, wall, cpu = _time_steps(*make_dataset(n, dets), repeats)
        floor = statistics.median(cpu["pycocotools keypoints only (floor)"])
        for name, ts in wall.items():
            med, med_cpu = statistics.median(ts), statistics.median(cpu[name])
            rows.append([n, n_records, name, f"{med:.2f}", f"{min(ts):.2f}-{max(ts):.2f}", f"{med_cpu:.2f}",
                         f"{med_cpu / n * 1e3:.2f}", f"{med_cpu / floor:.2f}"])
    return rows


def settings(cfg: Config) -> tuple[list[int], int, int]:
    return ([1000], 20, 1) if cfg.quick else ([1000, 5000], 20, 3)


def run(cfg: Config, sizes: list[int] | None = None, dets: int | None = None,
        repeats: int | None = None) -> list[Table]:
    """The evaluation table (``python -m benchmarks --only eval``)."""
    d_sizes, d_dets, d_repeats = settings(cfg)
    sizes, dets, repeats = sizes or d_sizes, dets or d_dets, repeats or d_repeats
    notes: list[str] = []
    with load_note(notes):
        rows = eval_rows(sizes, dets, repeats)
    return [Table(f"COCO evaluation, {dets} detections per image, K={K} (median of {repeats})",
                  ["images", "records", "step", "s", "spread s", "CPU s", "CPU ms/image", "x keypoints floor (CPU)"],
                  rows,
                  [("Floor: pycocotools keypoint evaluation alone on the same records. Validation runs "
                    "`detections_to_records` + `CocoEvaluator.evaluate`. All of it is single-threaded Python: the "
                    "CPU time is the steadier figure on a shared machine."), *notes])]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1000 images, one run")
    p.add_argument("--images", help="comma-separated image counts (default 1000,5000)")
    p.add_argument("--dets", type=int, help="detections per image (default 20)")
    p.add_argument("--repeats", type=int)
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.images.split(",")] if a.images else None
    for table in run(Config(quick=a.quick), sizes, a.dets, a.repeats):
        print_table(table)


if __name__ == "__main__":
    main()
