"""Drawing boxes and skeletons onto images (TensorBoard previews, predict.py)."""
from __future__ import annotations

import cv2
import numpy as np

PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 56, 56), (56, 160, 255), (72, 210, 90), (255, 170, 30), (190, 90, 255), (0, 210, 200),
    (255, 110, 190), (160, 160, 40),
)


def draw_poses(image: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray, skeleton: list[tuple[int, int]],
               kpt_threshold: float = 0.5, scores: np.ndarray | None = None,
               color: tuple[int, int, int] | None = None) -> np.ndarray:
    """Return a copy of ``image`` with boxes, limbs and keypoints drawn.

    Args:
        image: ``(H, W, 3)`` uint8 (RGB or BGR: colours are used as given).
        boxes: ``(N, 4)`` xyxy pixels.
        keypoints: ``(N, K, 3)``; the third value is a confidence (predictions) or a visibility
            flag v (labels). Points with value ``< kpt_threshold`` are not drawn (v=1 and v=2 pass 0.5).
        skeleton: 0-based keypoint index pairs.
        scores: optional ``(N,)`` detection scores written above each box.
        color: one colour for everything; default: a colour per person.
    """
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 250))
    for i in range(len(boxes)):
        c = color or PALETTE[i % len(PALETTE)]
        x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), c, thick)
        if scores is not None:
            cv2.putText(out, f"{float(scores[i]):.2f}", (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.35 * thick, c, thick, cv2.LINE_AA)
        kp = keypoints[i]
        ok = kp[:, 2] >= kpt_threshold
        for a, b in skeleton:
            if ok[a] and ok[b]:
                cv2.line(out, (int(kp[a, 0]), int(kp[a, 1])), (int(kp[b, 0]), int(kp[b, 1])), c, thick, cv2.LINE_AA)
        for j in np.flatnonzero(ok):
            cv2.circle(out, (int(kp[j, 0]), int(kp[j, 1])), thick + 1, (255, 255, 255), -1, cv2.LINE_AA)
            cv2.circle(out, (int(kp[j, 0]), int(kp[j, 1])), thick + 1, c, 1, cv2.LINE_AA)
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Concatenate two ``(H, W, 3)`` images horizontally with a white gap."""
    h = max(left.shape[0], right.shape[0])
    pad = lambda im: np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)))  # noqa: E731
    return np.concatenate((pad(left), np.full((h, gap, 3), 255, np.uint8), pad(right)), axis=1)


def track_color(track_id: int) -> tuple[int, int, int]:
    """A stable colour per track id (grey for an untracked detection, id <= 0)."""
    return PALETTE[(track_id - 1) % len(PALETTE)] if track_id > 0 else (150, 150, 150)


def draw_tracks(image: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray, track_ids: np.ndarray,
                skeleton: list[tuple[int, int]], kpt_threshold: float = 0.5,
                trails: dict[int, list[tuple[float, float]]] | None = None) -> np.ndarray:
    """Like ``draw_poses``, each person in its track's colour with ``#id`` above its box, and each track's trail
    (``trails``: id -> recent box centres) as a polyline. ``track_ids (N,)``; arrays as in ``draw_poses``."""
    out = np.ascontiguousarray(image.copy())
    thick = max(1, round(min(out.shape[:2]) / 250))
    for tid, pts in (trails or {}).items():
        if len(pts) > 1:
            cv2.polylines(out, [np.round(np.array(pts)).astype(np.int32)], False, track_color(tid), thick, cv2.LINE_AA)
    for i in range(len(boxes)):
        tid = int(track_ids[i])
        c = track_color(tid)
        out = draw_poses(out, boxes[i:i + 1], keypoints[i:i + 1], skeleton, kpt_threshold, color=c)
        if tid > 0:
            x1, y1 = int(round(float(boxes[i, 0]))), int(round(float(boxes[i, 1])))
            cv2.putText(out, f"#{tid}", (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, c, thick,
                        cv2.LINE_AA)
    return out
