"""Synthetic people moving over video frames, with ground-truth identities: the data tracking is measured on.

``render_video(VideoConfig(...))`` returns the frames and, per frame, each visible person's COCO-style label
and ``track_id``. People walk (a steady drift, a small vertical bob) across a static backdrop: some cross
each other, some pass behind a pillar (their joints there become occluded, v=1, or unlabelled), and some walk out
of the image and come back in (the same ``track_id``: a tracker that starts a new id there makes an id switch).
``write_video_dataset(out, config)`` writes it as a COCO keypoints set (``video.json``: ``images`` are the
frames in order, each annotation has ``track_id``) plus the frames as JPEG files and ``video.mp4``.

    python -m yolopose.synthetic.video --out synthetic_video/ [--frames 150 --people 5 --seed 0]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from yolopose.data.coco_person import coco_person_category
from yolopose.synthetic.backdrop import draw_clutter, finish, make_background
from yolopose.synthetic.figure import Figure, draw_figure, sample_figure
from yolopose.synthetic.scene import OCCLUDER_ID, PersonLabel, keypoint_labels


@dataclass
class VideoConfig:
    """What to render: ``frames`` frames of ``width x height`` at ``fps`` with ``people`` walkers."""
    frames: int = 150
    width: int = 320
    height: int = 240
    fps: float = 25.0
    people: int = 5
    min_person_height: float = 0.35   # fraction of the frame height
    max_person_height: float = 0.6
    speed: tuple[float, float] = (0.4, 1.2)   # pixels per frame
    pillar: bool = True               # a static occluder people pass behind
    leave_and_return: bool = True     # the first walker turns round outside the image and comes back
    seed: int = 0


@dataclass
class Walker:
    """One person: a fixed figure (hips at the origin), a start point, a velocity, and where it turns round."""
    figure: Figure
    height: float
    start: np.ndarray       # (2,) hip position in frame 0
    velocity: np.ndarray    # (2,) pixels per frame
    bob: float              # vertical bob amplitude, pixels
    phase: float
    turn: tuple[float, float] | None   # x range outside which the walker turns round (None: never)

    def position(self, t: int) -> np.ndarray:
        """Hip position at frame ``t``: a straight walk, reflected at ``turn`` (leaving and coming back)."""
        x, y = self.start + self.velocity * t
        if self.turn is not None:
            lo, hi = self.turn
            span = hi - lo
            u = (x - lo) % (2 * span)
            x = lo + (u if u <= span else 2 * span - u)
        return np.array([x, y + self.bob * np.sin(self.phase + 0.35 * t)])


def _walkers(rng: np.random.Generator, cfg: VideoConfig) -> list[Walker]:
    """Walkers spread over the width in alternating directions, so that neighbours' paths cross; the first one
    (``leave_and_return``) walks out of the image on the right, turns round out of sight and comes back."""
    out = []
    lo_h, hi_h = cfg.min_person_height * cfg.height, cfg.max_person_height * cfg.height
    for i in range(cfg.people):
        height = float(rng.uniform(lo_h, hi_h))
        figure = sample_figure(rng, height, angle=float(rng.normal(0.0, 0.05)))
        direction = 1.0 if i % 2 == 0 else -1.0
        speed = float(rng.uniform(*cfg.speed))
        start_x = cfg.width * (i + rng.uniform(0.3, 0.7)) / cfg.people
        hip_y = cfg.height * rng.uniform(0.5, 0.62)
        turn = None
        if cfg.leave_and_return and i == 0:
            start_x, speed = cfg.width * 0.55, 2.0 * cfg.speed[1]
            turn = (-0.5 * height, cfg.width + 0.55 * height)
        out.append(Walker(figure, height, np.array([start_x, hip_y]), np.array([direction * speed, 0.0]),
                          bob=0.01 * height, phase=float(rng.uniform(0, 2 * np.pi)), turn=turn))
    return out


def render_video(cfg: VideoConfig) -> tuple[list[np.ndarray], list[list[tuple[int, PersonLabel]]]]:
    """The frames ``(H, W, 3) uint8 BGR`` and, per frame, ``(track_id, label)`` of each person with a labelled
    keypoint in view (track ids start at 1; nearer, i.e. taller, people are drawn over farther ones)."""
    rng = np.random.default_rng([cfg.seed, 7])
    background = make_background(rng, cfg.width, cfg.height)
    draw_clutter(rng, background, int(rng.integers(0, 6)))
    walkers = _walkers(rng, cfg)
    pillar_x = int(cfg.width * rng.uniform(0.3, 0.7))
    pillar_w = max(int(cfg.width * 0.05), 3)
    pillar_colour = tuple(int(c) for c in rng.integers(40, 200, 3))
    frames, labels = [], []
    order = sorted(range(len(walkers)), key=lambda i: walkers[i].height)
    for t in range(cfg.frames):
        image = background.copy()
        owner = np.zeros((cfg.height, cfg.width), np.uint8)
        placed = {}
        for owner_id, i in enumerate(order, start=1):
            w = walkers[i]
            figure = w.figure.moved(w.position(t))
            draw_figure(image, owner, figure, owner_id)
            placed[i] = (owner_id, figure)
        if cfg.pillar:   # a post in front of everyone, from the top of the frame to the bottom
            image[:, pillar_x:pillar_x + pillar_w] = pillar_colour
            owner[:, pillar_x:pillar_x + pillar_w] = OCCLUDER_ID
        frame_labels = []
        for i, (owner_id, figure) in placed.items():
            label = _label(figure, owner, owner_id, cfg)
            if label is not None:
                frame_labels.append((i + 1, label))
        frames.append(finish(np.random.default_rng([cfg.seed, 11]), image))   # the same camera every frame
        labels.append(sorted(frame_labels, key=lambda x: x[0]))
    return frames, labels


def _label(figure: Figure, owner: np.ndarray, owner_id: int, cfg: VideoConfig) -> PersonLabel | None:
    """The person's label in this frame, or None when it shows no labelled keypoint (outside the image)."""
    kp = keypoint_labels(figure, owner, owner_id)
    if not (kp[:, 2] > 0).any():
        return None
    box = np.clip(figure.extent(), 0, [cfg.width, cfg.height, cfg.width, cfg.height])
    wh = box[2:] - box[:2]
    x0, y0 = np.floor(box[:2]).astype(int)
    x1, y1 = np.ceil(box[2:]).astype(int)
    area = int(np.count_nonzero(owner[y0:y1, x0:x1] == owner_id))
    if wh.min() < 2 or area == 0:
        return None
    return PersonLabel(kp, np.concatenate([box[:2], wh]), area)


def video_coco(cfg: VideoConfig, labels: list[list[tuple[int, PersonLabel]]]) -> dict:
    """The COCO keypoints dict of a rendered video: image i is frame i (``frame_index``), annotations carry
    ``track_id``."""
    images, annotations = [], []
    for t, frame_labels in enumerate(labels):
        images.append({"id": t + 1, "file_name": f"{t:06d}.jpg", "width": cfg.width, "height": cfg.height,
                       "frame_index": t})
        for track_id, lab in frame_labels:
            kps: list[float] = []
            for x, y, v in lab.keypoints:
                kps += [round(float(x), 2), round(float(y), 2), int(v)] if v > 0 else [0, 0, 0]
            x0, y0, w, h = (round(float(v), 2) for v in lab.bbox)
            annotations.append({"id": len(annotations) + 1, "image_id": t + 1, "category_id": 1, "iscrowd": 0,
                                "bbox": [x0, y0, w, h], "area": float(lab.area), "keypoints": kps,
                                "num_keypoints": int((lab.keypoints[:, 2] > 0).sum()), "track_id": track_id})
    return {"info": {"description": "yolopose synthetic video", "config": asdict(cfg)}, "licenses": [],
            "images": images, "annotations": annotations, "categories": [coco_person_category()]}


def write_video_dataset(out: Path, cfg: VideoConfig, video: bool = True) -> Path:
    """Write ``out/frames/*.jpg``, ``out/video.json`` and (``video``) ``out/video.mp4``; return the JSON path."""
    out = Path(out)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    frames, labels = render_video(cfg)
    for t, frame in enumerate(frames):
        cv2.imwrite(str(out / "frames" / f"{t:06d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if video:
        writer = cv2.VideoWriter(str(out / "video.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), cfg.fps,
                                 (cfg.width, cfg.height))
        for frame in frames:
            writer.write(frame)
        writer.release()
    path = out / "video.json"
    path.write_text(json.dumps(video_coco(cfg, labels)))
    return path


def main(argv: list[str] | None = None) -> None:
    """CLI: write a synthetic tracking video set."""
    p = argparse.ArgumentParser(prog="python -m yolopose.synthetic.video", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--frames", type=int, default=VideoConfig.frames)
    p.add_argument("--people", type=int, default=VideoConfig.people)
    p.add_argument("--width", type=int, default=VideoConfig.width)
    p.add_argument("--height", type=int, default=VideoConfig.height)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    path = write_video_dataset(a.out, VideoConfig(frames=a.frames, people=a.people, width=a.width, height=a.height,
                                                  seed=a.seed))
    print(f"wrote {a.frames} frames and {path}")


if __name__ == "__main__":
    main()
