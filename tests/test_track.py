"""Tracking: identities persist across a crossing and a short gap, weak detections continue a track, smoothing
lowers jitter with little lag, and the core does not import the tracker."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from yolopose.geometry import default_sigma_list
from yolopose.synthetic.video import VideoConfig, render_video
from yolopose.track import OneEuroFilter, PoseTracker, TrackerConfig

SIGMAS = default_sigma_list(17)


def _gt_detections(labels: list, noise: float = 1.0, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """Per frame ``(boxes, scores, keypoints, gt_ids)`` built from the ground truth (keypoints jittered)."""
    rng = np.random.default_rng(seed)
    out = []
    for frame in labels:
        boxes = np.array([[*lab.bbox[:2], *(lab.bbox[:2] + lab.bbox[2:])] for _, lab in frame]).reshape(-1, 4)
        kpts = np.array([np.concatenate([lab.keypoints[:, :2] + rng.normal(0, noise, (17, 2)),
                                         (lab.keypoints[:, 2:] > 0).astype(float)], 1) for _, lab in frame])
        out.append((boxes, np.full(len(boxes), 0.9), kpts.reshape(-1, 17, 3), np.array([i for i, _ in frame])))
    return out


def _crossing() -> tuple[list, list]:
    cfg = VideoConfig(frames=70, width=240, height=160, people=2, speed=(1.6, 1.8), pillar=False,
                      leave_and_return=False, seed=3)
    _, labels = render_video(cfg)
    return labels, _gt_detections(labels)


def _run(dets: list, config: TrackerConfig | None = None) -> list[dict[int, int]]:
    """Per frame: gt id -> track id."""
    tracker = PoseTracker(SIGMAS, config or TrackerConfig())
    out = []
    for boxes, scores, kpts, gt in dets:
        ids = tracker.update(boxes, scores, kpts)
        out.append(dict(zip(gt.tolist(), ids.tolist())))
    return out


def test_identities_persist_across_a_crossing() -> None:
    labels, dets = _crossing()
    xs = [{i: lab.bbox[0] + lab.bbox[2] / 2 for i, lab in frame} for frame in labels]
    assert (xs[0][1] - xs[0][2]) * (xs[-1][1] - xs[-1][2]) < 0           # the two people did cross
    ids = _run(dets)
    assert set(ids[0].values()) == {1, 2}                                # confirmed from the first frame
    assert all(frame == ids[0] for frame in ids)                         # the same id all the way


def test_a_track_survives_a_gap_and_ends_after_max_lost() -> None:
    labels, dets = _crossing()
    gap = [(b[g != 1], s[g != 1], k[g != 1], g[g != 1]) if 10 <= t < 16 else (b, s, k, g)
           for t, (b, s, k, g) in enumerate(dets)]
    ids = _run(gap)
    assert ids[9][1] == ids[16][1] == ids[-1][1]                          # 6 frames missed: the same person
    ids = _run(gap, TrackerConfig(max_lost=3))
    assert ids[16][1] != ids[9][1] and ids[17][1] == 3                    # lost for too long: a new id


def test_weak_detections_continue_a_track_but_do_not_start_one() -> None:
    labels, dets = _crossing()
    weak = [(b, np.where(g == 1, 0.3, s) if 10 <= t < 30 else s, k, g) for t, (b, s, k, g) in enumerate(dets)]
    ids = _run(weak)
    assert all(frame[1] == ids[0][1] for frame in ids)
    late = [(b, np.where(g == 1, 0.3, s), k, g) for b, s, k, g in dets]
    assert all(frame[1] == -1 for frame in _run(late))                   # only ever weak: never tracked


def test_keypoints_tell_apart_people_whose_boxes_coincide() -> None:
    """Two people in one box-sized area with swapped predicted boxes: OKS keeps each on its own pose."""
    rng = np.random.default_rng(0)
    pose = [rng.uniform(0, 60, (17, 2)), rng.uniform(0, 60, (17, 2))]
    box = np.array([0.0, 0.0, 60.0, 60.0])
    tracker = PoseTracker(SIGMAS, TrackerConfig(oks_weight=0.8))
    for t in range(5):
        order = [0, 1] if t % 2 == 0 else [1, 0]                          # detections come in either order
        kpts = np.stack([np.concatenate([pose[i] + t, np.ones((17, 1))], 1) for i in order])
        boxes = np.stack([box + t, box + t + 0.5 * (1 - 2 * (order[0] == 1))])
        ids = tracker.update(boxes, np.full(2, 0.9), kpts)
        assert dict(zip(order, ids.tolist())) == {0: 1, 1: 2}


def test_one_euro_lowers_jitter_with_at_most_a_frame_of_lag() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(200)
    truth = 2.0 * t                                                     # a steady walk, 2 px per frame
    noisy = truth + rng.normal(0, 1.5, len(t))
    f = OneEuroFilter(25.0, min_cutoff=1.0, beta=0.05)
    smooth = np.array([float(f(np.array([x]))[0]) for x in noisy])
    jitter = lambda s: np.abs(np.diff(s[20:]) - np.diff(truth[20:])).mean()       # noqa: E731
    assert jitter(smooth) < 0.7 * jitter(noisy)
    lag = min(range(4), key=lambda k: np.abs(smooth[20 + k:] - truth[20:len(t) - k]).mean())
    assert lag <= 1


def test_the_core_imports_without_the_tracker() -> None:
    code = ("import sys, yolopose, yolopose.cli, yolopose.predict, yolopose.inference, yolopose.export.cli; "
            "print(sorted(m for m in ('yolopose.track', 'motmetrics') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("people", [3])
def test_video_set_has_identities_and_gaps(people: int, tmp_path) -> None:
    import json

    from yolopose.synthetic.video import write_video_dataset

    path = write_video_dataset(tmp_path, VideoConfig(frames=120, people=people, width=200, height=150, seed=1),
                               video=False)
    coco = json.loads(path.read_text())
    assert len(coco["images"]) == 120 and len(list((tmp_path / "frames").glob("*.jpg"))) == 120
    frames_of = {}
    for a in coco["annotations"]:
        frames_of.setdefault(a["track_id"], []).append(a["image_id"])
    assert set(frames_of) <= set(range(1, people + 1)) and 1 in frames_of
    back = sorted(frames_of[1])
    assert any(b - a > 1 for a, b in zip(back, back[1:]))               # the first walker leaves and comes back


def test_mot_metrics_of_the_benchmark_score_a_perfect_tracking_as_one() -> None:
    pytest.importorskip("motmetrics")
    from benchmarks.tracking import jitter_and_lag, mot_metrics, track

    labels, dets = _crossing()
    run = track([d[:3] for d in dets], labels, SIGMAS, TrackerConfig(smooth=True), 25.0)
    m = mot_metrics(run)
    assert m["idf1"] == pytest.approx(1.0) and m["mota"] == pytest.approx(1.0) and m["num_switches"] == 0
    jl = jitter_and_lag(run)
    assert jl["jitter_smoothed"] < jl["jitter_raw"] and jl["lag_frames"] <= 1
