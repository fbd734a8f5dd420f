"""How precise must keypoints be for a given keypoint AP? The ground truth, perturbed, scored by pycocotools.

    python -m yolopose.tools.oks_sensitivity --ann val.json --images val_dir [--noise 0.02,0.04,...]
                                             [--mean-pose left_wrist,right_wrist,...] [--seed 0]

Every labelled person of a COCO-format split becomes one result record with its true box and score 1, and
keypoints that are:

- the truth plus Gaussian noise whose RMS distance is ``e * sqrt(box area)``, for each ``--noise`` level e
  (the same unit as ``keypoint_report``'s median errors; a 2-D Gaussian's median distance is 0.83 x RMS);
- the truth except the ``--mean-pose`` keypoints, which are put where the split's mean pose places them in
  the true box (for example the limbs: what AP a model gets that is exact on head and torso only);
- the mean pose in the true box for every keypoint (a model that found everyone but learned no pose).

Each set is scored with the split's OKS sigmas. Box AP is 1 by construction, so only keypoint AP is printed.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np

from yolopose.data.coco import CocoKeypoints
from yolopose.evaluation import CocoEvaluator

DEFAULT_NOISE = (0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.12)
KeypointsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def perturbed_records(gt: dict, keypoints_fn: KeypointsFn) -> list[dict]:
    """One score-1 record per annotation with labelled keypoints; ``keypoints_fn(xy (K, 2), box (4,) x, y, w, h)
    -> (K, 2)`` gives its keypoints (every keypoint is reported, labelled or not, as a model would)."""
    records = []
    for a in gt["annotations"]:
        if a.get("iscrowd", 0) or a.get("num_keypoints", 0) == 0:
            continue
        xy = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)[:, :2]
        box = np.asarray(a["bbox"], dtype=np.float64)
        kpt = np.concatenate((keypoints_fn(xy, box), np.ones((len(xy), 1))), 1)
        records.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
                        "bbox": box.tolist(), "keypoints": kpt.ravel().tolist()})
    return records


def with_noise(rms: float, rng: np.random.Generator) -> KeypointsFn:
    """Keypoints moved by isotropic Gaussian noise of RMS distance ``rms * sqrt(w * h)``."""
    def fn(xy: np.ndarray, box: np.ndarray) -> np.ndarray:
        sigma = rms * np.sqrt(box[2] * box[3]) / np.sqrt(2.0)      # per axis
        return xy + rng.normal(0.0, 1.0, xy.shape) * sigma
    return fn


def with_mean_pose(prior: np.ndarray, which: list[int]) -> KeypointsFn:
    """Keypoints ``which`` replaced by ``prior (K, 2)`` (offsets from the box centre in box widths/heights)."""
    def fn(xy: np.ndarray, box: np.ndarray) -> np.ndarray:
        out = xy.copy()
        centre, size = box[:2] + box[2:] / 2, box[2:]
        out[which] = centre + prior[which] * size
        return out
    return fn


def sensitivity(split: CocoKeypoints, noise: list[float], mean_pose: list[int],
                seed: int = 0) -> list[tuple[str, dict]]:
    """``[(label, metrics)]`` for each noise level, the ``mean_pose`` subset (if any) and the whole mean pose."""
    gt, info = split.coco_gt(), split.info
    evaluator = CocoEvaluator(gt, info.sigmas)
    prior = split.table.mean_pose()
    rng = np.random.default_rng(seed)
    out = [(f"noise RMS {e:.2f} x sqrt(box area)", evaluator.evaluate(perturbed_records(gt, with_noise(e, rng))))
           for e in noise]
    if mean_pose:
        names = ", ".join(info.keypoint_names[j] for j in mean_pose)
        out.append((f"exact, but mean pose for: {names}",
                    evaluator.evaluate(perturbed_records(gt, with_mean_pose(prior, mean_pose)))))
    everyone = list(range(info.num_keypoints))
    whole = evaluator.evaluate(perturbed_records(gt, with_mean_pose(prior, everyone)))
    out.append(("mean pose for every keypoint", whole))
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the keypoint AP of the perturbed ground truth of a COCO split; 0 on success."""
    p = argparse.ArgumentParser(prog="python -m yolopose.tools.oks_sensitivity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ann", required=True, help="COCO keypoints JSON")
    p.add_argument("--images", required=True, help="folder that the JSON's file_name entries are relative to")
    p.add_argument("--noise", default=",".join(str(e) for e in DEFAULT_NOISE),
                   help="comma-separated RMS errors in units of sqrt(box area)")
    p.add_argument("--mean-pose", default="", help="comma-separated keypoint names to replace by the mean pose")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    split = CocoKeypoints(a.ann, a.images)
    names = list(split.info.keypoint_names)
    wanted = [n.strip() for n in a.mean_pose.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise SystemExit(f"{a.ann}: no keypoint named {', '.join(unknown)} (it has: {', '.join(names)})")
    noise = [float(e) for e in a.noise.split(",") if e.strip()]
    print(f"{a.ann}: keypoint AP of the ground truth, perturbed (sigmas {np.round(split.info.sigmas, 3).tolist()})")
    results = sensitivity(split, noise, [names.index(n) for n in wanted], a.seed)
    width = max(len(label) for label, _ in results)
    for label, met in results:
        print(f"  {label:{width}s}  AP {met['kpt_AP']:.3f}  AP50 {met['kpt_AP50']:.3f}  AP75 {met['kpt_AP75']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
