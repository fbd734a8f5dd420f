"""Tracking measured with MOT metrics on a synthetic video with ground-truth identities.

    python -m benchmarks.tracking --weights best.ckpt|model.onnx [--runtime openvino] [--frames 150 --people 5]
                                  [--seeds 0,1,2] [--threads 2]

Per seed it renders ``yolopose.synthetic.video`` (walkers that cross, pass behind a post, and one that walks out
and comes back), runs the model on every frame, tracks the detections (``yolopose.track.PoseTracker``) and
scores them with ``motmetrics`` (MIT; ``pip install motmetrics``): MOTA, IDF1, ID switches (boxes matched at
IoU >= 0.5). Keypoint jitter: the mean, over ground-truth people matched in two consecutive frames, of
``|predicted displacement - true displacement|`` per labelled keypoint, in pixels, raw and One-Euro smoothed;
lag: the frame shift (0..4) that best aligns each smoothed keypoint track with the truth on the steady walkers.
Also the fps of the whole loop (model + tracker) and the tracker's own time per frame, measured in the same run.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np

from yolopose.synthetic.video import VideoConfig, render_video
from yolopose.track import PoseTracker, TrackerConfig, box_iou


@dataclass
class Run:
    """What one tracked video gives: per frame, ground truth and tracked detections."""
    gt: list[list[tuple[int, np.ndarray, np.ndarray]]] = field(default_factory=list)   # (id, xyxy, (K,3))
    hyp: list[list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]] = field(default_factory=list)  # + raw kpts
    model_s: float = 0.0
    track_s: float = 0.0


def detect_frames(predictor: object, frames: list[np.ndarray]) -> tuple[list[tuple], float]:
    """Detections ``(boxes, scores, keypoints)`` of every BGR frame in original pixels, and the seconds it took."""
    out, t0 = [], time.perf_counter()
    for bgr in frames:
        det = predictor(np.ascontiguousarray(bgr[..., ::-1])).image(0)
        n = int(det.num_dets)
        out.append((det.boxes[:n].numpy(), det.scores[:n].numpy(), det.keypoints[:n].numpy()))
    return out, time.perf_counter() - t0


def track(dets: list[tuple], labels: list, sigmas: list[float], config: TrackerConfig, fps: float) -> Run:
    """Run ``PoseTracker`` over per-frame detections; keep ground truth and hypotheses side by side."""
    tracker, run = PoseTracker(sigmas, config, fps), Run()
    for (boxes, scores, kpts), frame_labels in zip(dets, labels):
        t0 = time.perf_counter()
        ids = tracker.update(boxes, scores, kpts)
        run.track_s += time.perf_counter() - t0
        keep = ids > 0
        run.hyp.append([(int(i), b, s, k) for i, b, s, k in zip(ids[keep], boxes[keep], tracker.smoothed[keep],
                                                                   kpts[keep])])
        run.gt.append([(tid, np.array([*lab.bbox[:2], *(lab.bbox[:2] + lab.bbox[2:])]), lab.keypoints)
                       for tid, lab in frame_labels])
    return run


def mot_metrics(run: Run) -> dict[str, float]:
    """MOTA, IDF1, ID switches, precision and recall from motmetrics (boxes matched at IoU >= 0.5)."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for gt, hyp in zip(run.gt, run.hyp):
        gb = np.array([g[1] for g in gt]).reshape(-1, 4)
        hb = np.array([h[1] for h in hyp]).reshape(-1, 4)
        dist = 1 - box_iou(gb, hb) if len(gb) and len(hb) else np.zeros((len(gb), len(hb)))
        dist = np.where(dist > 0.5, np.nan, dist)
        acc.update([g[0] for g in gt], [h[0] for h in hyp], dist)
    summary = mm.metrics.create().compute(acc, metrics=["mota", "idf1", "num_switches", "precision", "recall",
                                                         "num_unique_objects", "mostly_tracked"], name="run")
    return {k: float(v) for k, v in summary.iloc[0].items()}


def _matched(run: Run) -> list[dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per frame: gt id -> (gt keypoints, smoothed keypoints, raw keypoints) of the hypothesis matched to it."""
    out = []
    for gt, hyp in zip(run.gt, run.hyp):
        frame = {}
        if gt and hyp:
            iou = box_iou(np.array([g[1] for g in gt]), np.array([h[1] for h in hyp]))
            from scipy.optimize import linear_sum_assignment
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols):
                if iou[r, c] >= 0.5:
                    frame[gt[r][0]] = (gt[r][2], hyp[c][2], hyp[c][3])
        out.append(frame)
    return out


def jitter_and_lag(run: Run) -> dict[str, float]:
    """Keypoint jitter (px) raw and smoothed, and the smoothed tracks' lag in frames (see the module docstring)."""
    matched = _matched(run)
    err = {"raw": [], "smoothed": []}
    for a, b in zip(matched, matched[1:]):
        for pid in a.keys() & b.keys():
            (g0, s0, r0), (g1, s1, r1) = a[pid], b[pid]
            ok = (g0[:, 2] > 0) & (g1[:, 2] > 0) & (r0[:, 2] >= 0.5) & (r1[:, 2] >= 0.5)
            true = g1[ok, :2] - g0[ok, :2]
            err["raw"] += list(np.linalg.norm((r1[ok, :2] - r0[ok, :2]) - true, axis=1))
            err["smoothed"] += list(np.linalg.norm((s1[ok, :2] - s0[ok, :2]) - true, axis=1))
    # Lag: per gt id, the keypoint x series over the frames it is matched in a row; the shift that best aligns them.
    costs = np.zeros(5)
    for pid in {p for f in matched for p in f}:
        series = [(t, f[pid]) for t, f in enumerate(matched) if pid in f]
        if len(series) < 20:
            continue
        gt = np.stack([s[1][0][:, :2] for s in series])
        sm = np.stack([s[1][1][:, :2] for s in series])
        ok = np.stack([s[1][0][:, 2] > 0 for s in series])
        for shift in range(5):
            d = np.linalg.norm(sm[shift:] - gt[:len(gt) - shift], axis=-1)
            costs[shift] += float(np.where(ok[shift:] & ok[:len(ok) - shift], d, 0).mean())
    return {"jitter_raw": float(np.mean(err["raw"])) if err["raw"] else float("nan"),
            "jitter_smoothed": float(np.mean(err["smoothed"])) if err["smoothed"] else float("nan"),
            "lag_frames": int(np.argmin(costs))}


def main(argv: list[str] | None = None) -> None:
    """Print one row per seed and the mean."""
    import torch

    from yolopose.inference import load_predictor

    p = argparse.ArgumentParser(prog="python -m benchmarks.tracking", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--runtime", default=None)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--people", type=int, default=5)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--conf", type=float, default=0.1, help="detector threshold (the tracker's low stage)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    predictor = load_predictor(a.weights, conf=a.conf, threads=a.threads, runtime=a.runtime)
    print(f"model: {predictor.description}")
    print("| seed | frames | people | MOTA | IDF1 | ID switches | recall | precision | jitter raw px | jitter smoothed px "
          "| lag frames | fps (model + tracker) | tracker ms/frame |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        cfg = VideoConfig(frames=a.frames, people=a.people, seed=seed)
        frames, labels = render_video(cfg)
        dets, model_s = detect_frames(predictor, frames)
        run = track(dets, labels, predictor.info.sigmas, TrackerConfig(smooth=True), cfg.fps)
        m = {**mot_metrics(run), **jitter_and_lag(run)}
        fps = len(frames) / (model_s + run.track_s)
        row = [m["mota"], m["idf1"], m["num_switches"], m["recall"], m["precision"], m["jitter_raw"],
               m["jitter_smoothed"], m["lag_frames"], fps, 1000 * run.track_s / len(frames)]
        rows.append(row)
        print(f"| {seed} | {cfg.frames} | {cfg.people} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.0f} | {row[3]:.3f} | "
              f"{row[4]:.3f} | {row[5]:.2f} | {row[6]:.2f} | {row[7]} | {row[8]:.1f} | {row[9]:.2f} |", flush=True)
    mean = np.mean(np.array(rows, dtype=float), axis=0)
    print(f"| mean | | | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.1f} | {mean[3]:.3f} | {mean[4]:.3f} | {mean[5]:.2f} | "
          f"{mean[6]:.2f} | {mean[7]:.1f} | {mean[8]:.1f} | {mean[9]:.2f} |")


if __name__ == "__main__":
    main()
