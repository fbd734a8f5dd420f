"""People over time: track identities across video frames from boxes *and* keypoints, and smooth the keypoints.

``PoseTracker.update(boxes, scores, keypoints)`` takes one frame's detections (original pixels) and returns a
track id per detection (-1: not tracked). Association is ByteTrack's two stages (Zhang et al., 2022) with OKS
added to the cost:

1. every track's box is predicted by a constant-velocity Kalman filter on ``(cx, cy, w, h)``, its keypoints moved
   with the box centre;
2. detections scoring ``>= high`` are matched to all tracks (live and recently lost) by the Hungarian algorithm
   on ``1 - similarity``, where similarity is ``(1 - oks_weight) * IoU + oks_weight * OKS`` when both the detection
   and the track have confident keypoints, else IoU; pairs above ``max_cost`` never match;
3. detections scoring ``>= low`` but under ``high`` (a person half hidden, blurred) are matched by IoU alone to the
   live tracks still unmatched: they keep a track alive instead of starting a new one;
4. an unmatched detection scoring ``>= new_track`` starts a tentative track, confirmed (and given the next id)
   when it is matched in the next frame (or at once in the first frame); a track unmatched for more than
   ``max_lost`` frames ends.

``OneEuroFilter`` (Casiez et al., 2012) smooths each track's keypoints: little smoothing when a joint moves fast
(low lag), strong smoothing when it stays (little jitter). Only numpy and scipy (``linear_sum_assignment``,
already required by albumentations) are used: the peers' trackers did not fit (docs/tracking.md says why).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

_INF_COST = 1e6


@dataclass
class TrackerConfig:
    """Association and life-cycle settings (see the module docstring); the defaults suit 25-30 fps video."""
    high: float = 0.5
    low: float = 0.1
    new_track: float = 0.6
    max_cost: float = 0.8
    low_max_cost: float = 0.5
    oks_weight: float = 0.5
    kpt_conf: float = 0.5      # keypoints at least this confident take part in OKS
    max_lost: int = 30
    smooth: bool = False       # One-Euro smoothing of the reported keypoints
    min_cutoff: float = 1.0    # One-Euro: Hz at rest (lower: smoother, more lag)
    beta: float = 0.05         # One-Euro: how fast the cutoff rises with speed (higher: less lag)
    trail: int = 0             # box centres kept per track for drawing a trail (0: none)


class BoxKalman:
    """Constant-velocity Kalman filter on ``(cx, cy, w, h)``, noise proportional to the box height (ByteTrack's)."""

    _POS, _VEL = 1 / 20, 1 / 160

    def __init__(self, box: np.ndarray) -> None:
        cxcywh = _cxcywh(box)
        self.x = np.concatenate([cxcywh, np.zeros(4)])
        h = max(cxcywh[3], 1.0)
        std = np.array([2 * self._POS * h] * 4 + [10 * self._VEL * h] * 4)
        self.p = np.diag(std**2)
        self.f = np.eye(8)
        self.f[:4, 4:] = np.eye(4)

    def predict(self) -> np.ndarray:
        """Advance one frame; return the predicted xyxy box ``(4,)``."""
        h = max(self.x[3], 1.0)
        q = np.diag(np.array([self._POS * h] * 4 + [self._VEL * h] * 4) ** 2)
        self.x = self.f @ self.x
        self.p = self.f @ self.p @ self.f.T + q
        self.x[2:4] = np.maximum(self.x[2:4], 1.0)
        return self.box

    def correct(self, box: np.ndarray) -> None:
        """Update with a measured xyxy box."""
        z = _cxcywh(box)
        r = np.diag((np.array([self._POS] * 4) * max(z[3], 1.0)) ** 2)
        s = self.p[:4, :4] + r
        gain = self.p[:, :4] @ np.linalg.inv(s)
        self.x = self.x + gain @ (z - self.x[:4])
        self.p = self.p - gain @ self.p[:4, :]

    @property
    def box(self) -> np.ndarray:
        cx, cy, w, h = self.x[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


class OneEuroFilter:
    """One-Euro low-pass filter of an array signal sampled at ``rate`` Hz (every element filtered on its own)."""

    def __init__(self, rate: float, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0) -> None:
        self.rate, self.min_cutoff, self.beta, self.d_cutoff = rate, min_cutoff, beta, d_cutoff
        self.value: np.ndarray | None = None
        self.speed: np.ndarray | None = None

    def _alpha(self, cutoff: np.ndarray | float) -> np.ndarray | float:
        tau = 1.0 / (2 * np.pi * cutoff)
        return 1.0 / (1.0 + tau * self.rate)

    def __call__(self, x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Filter the next sample ``x``; elements where ``valid`` is False keep their state (and are returned as
        filtered so far)."""
        x = np.asarray(x, np.float64)
        if self.value is None:
            self.value, self.speed = x.copy(), np.zeros_like(x)
            return x.copy()
        valid = np.ones(x.shape, bool) if valid is None else np.broadcast_to(valid, x.shape)
        speed = (x - self.value) * self.rate
        a_d = self._alpha(self.d_cutoff)
        speed = a_d * speed + (1 - a_d) * self.speed
        a = self._alpha(self.min_cutoff + self.beta * np.abs(speed))
        value = a * x + (1 - a) * self.value
        self.value = np.where(valid, value, self.value)
        self.speed = np.where(valid, speed, self.speed)
        return self.value.copy()


@dataclass
class Track:
    """One person over time. ``id`` is 0 until the track is confirmed."""
    kalman: BoxKalman
    box: np.ndarray                    # (4,) last matched xyxy, original pixels
    keypoints: np.ndarray              # (K, 3) last matched, original pixels
    score: float
    id: int = 0
    hits: int = 1
    lost: int = 0
    smoother: OneEuroFilter | None = None
    trail: list[tuple[float, float]] = field(default_factory=list)
    predicted: np.ndarray | None = None   # this frame's predicted box


class PoseTracker:
    """Persistent ids for the people of a video (see the module docstring).

    Args:
        sigmas: ``(K,)`` OKS sigmas of the model's keypoints.
        config: association and smoothing settings.
        fps: frame rate (the One-Euro filter's sampling rate).
    """

    def __init__(self, sigmas: np.ndarray | list[float], config: TrackerConfig | None = None,
                 fps: float = 25.0) -> None:
        self.sigmas = np.asarray(sigmas, np.float64)
        self.cfg = config or TrackerConfig()
        self.fps = fps
        self.tracks: list[Track] = []
        self.next_id = 1
        self.frame = 0
        self.smoothed: np.ndarray | None = None

    def update(self, boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """One frame: ``boxes (N, 4)`` xyxy, ``scores (N,)``, ``keypoints (N, K, 3)`` (original pixels) -> ``(N,)``
        track id of each detection, -1 for one that is not (yet) part of a confirmed track. After the call
        ``self.smoothed`` holds the ``(N, K, 3)`` keypoints to report (smoothed when ``config.smooth``)."""
        cfg = self.cfg
        boxes, scores = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64).ravel()
        keypoints = np.asarray(keypoints, np.float64).reshape(len(boxes), -1, 3)
        self.frame += 1
        for t in self.tracks:
            t.predicted = t.kalman.predict()
        ids = np.full(len(boxes), -1, np.int64)
        owner: dict[int, Track] = {}
        high = np.flatnonzero(scores >= cfg.high)
        low = np.flatnonzero((scores >= cfg.low) & (scores < cfg.high))
        # 1. confident detections against every track, lost ones included.
        pairs, free_tracks, free_high = self._match(self.tracks, high, boxes, keypoints, cfg.max_cost, use_oks=True)
        for t, d in pairs:
            owner[d] = t
        # 2. weak detections keep the still-unmatched live tracks alive (IoU only).
        live = [t for t in free_tracks if t.lost == 0 and t.id]
        pairs, _, _ = self._match(live, low, boxes, keypoints, cfg.low_max_cost, use_oks=False)
        for t, d in pairs:
            owner[d] = t
        matched = {id(t) for t in owner.values()}
        for d, t in owner.items():
            self._correct(t, boxes[d], scores[d], keypoints[d])
        # 3. tentative tracks missed once end; others age.
        kept = []
        for t in self.tracks:
            if id(t) in matched:
                kept.append(t)
                continue
            t.lost += 1
            if t.id and t.lost <= cfg.max_lost:
                kept.append(t)
        self.tracks = kept
        # 4. new tracks from confident unmatched detections.
        for d in free_high:
            if scores[d] >= cfg.new_track:
                t = Track(BoxKalman(boxes[d]), boxes[d].copy(), keypoints[d].copy(), float(scores[d]))
                t.smoother = OneEuroFilter(self.fps, cfg.min_cutoff, cfg.beta) if cfg.smooth else None
                self.tracks.append(t)
                owner[d] = t
                if self.frame == 1:
                    self._confirm(t)
        for d, t in owner.items():
            ids[d] = t.id if t.id else -1
        self.smoothed = self._report(owner, keypoints)
        return ids

    # ------------------------------------------------------------------ internals
    def _match(self, tracks: list[Track], dets: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray,
               max_cost: float, use_oks: bool) -> tuple[list[tuple[Track, int]], list[Track], list[int]]:
        """Hungarian matching of ``tracks`` and detection indices ``dets``: (pairs, unmatched tracks, unmatched
        detections)."""
        if not len(tracks) or not len(dets):
            return [], list(tracks), list(dets)
        pred = np.stack([t.predicted for t in tracks])
        sim = box_iou(pred, boxes[dets])
        if use_oks and self.cfg.oks_weight > 0:
            moved = np.stack([_moved_keypoints(t) for t in tracks])
            oks, both = keypoint_oks(moved, keypoints[dets], pred, self.sigmas, self.cfg.kpt_conf)
            w = self.cfg.oks_weight
            sim = np.where(both, (1 - w) * sim + w * oks, sim)
        cost = 1.0 - sim
        cost = np.where(cost > max_cost, _INF_COST, cost)
        rows, cols = linear_sum_assignment(cost)
        pairs = [(tracks[r], int(dets[c])) for r, c in zip(rows, cols) if cost[r, c] < _INF_COST]
        used_t = {id(t) for t, _ in pairs}
        used_d = {d for _, d in pairs}
        return pairs, [t for t in tracks if id(t) not in used_t], [int(d) for d in dets if int(d) not in used_d]

    def _correct(self, t: Track, box: np.ndarray, score: float, keypoints: np.ndarray) -> None:
        t.kalman.correct(box)
        t.box, t.keypoints, t.score = box.copy(), keypoints.copy(), score
        t.hits += 1
        t.lost = 0
        if not t.id and t.hits >= 2:
            self._confirm(t)

    def _confirm(self, t: Track) -> None:
        t.id = self.next_id
        self.next_id += 1

    def _report(self, owner: dict[int, Track], keypoints: np.ndarray) -> np.ndarray:
        """The keypoints to report per detection (smoothed per track) and the tracks' trails."""
        out = keypoints.copy()
        for d, t in owner.items():
            if t.smoother is not None:
                valid = keypoints[d, :, 2:3] >= self.cfg.kpt_conf
                out[d, :, :2] = t.smoother(keypoints[d, :, :2], valid)
            if self.cfg.trail:
                b = t.kalman.box
                t.trail = (t.trail + [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)])[-self.cfg.trail:]
        return out


def _cxcywh(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = box
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, 1.0), max(y2 - y1, 1.0)])


def _moved_keypoints(t: Track) -> np.ndarray:
    """The track's last keypoints ``(K, 3)`` shifted by its box's predicted motion since the last match."""
    moved = t.keypoints.copy()
    moved[:, :2] += (t.predicted[:2] + t.predicted[2:]) / 2 - (t.box[:2] + t.box[2:]) / 2
    return moved


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``a (N, 4)`` and ``b (M, 4)`` -> ``(N, M)``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def keypoint_oks(a: np.ndarray, b: np.ndarray, boxes: np.ndarray, sigmas: np.ndarray,
                 conf: float) -> tuple[np.ndarray, np.ndarray]:
    """OKS between keypoint sets ``a (N, K, 3)`` and ``b (M, K, 3)`` over the keypoints confident in both, with the
    area of ``boxes (N, 4)`` as scale -> ``(oks (N, M), has_common (N, M))``."""
    area = np.clip(boxes[:, 2:] - boxes[:, :2], 1, None).prod(-1)               # (N,)
    d2 = ((a[:, None, :, :2] - b[None, :, :, :2]) ** 2).sum(-1)               # (N, M, K)
    k2 = (2 * sigmas) ** 2
    sim = np.exp(-d2 / (2 * area[:, None, None] * k2[None, None] + 1e-9))
    both = (a[:, None, :, 2] >= conf) & (b[None, :, :, 2] >= conf)
    n = both.sum(-1)
    return (sim * both).sum(-1) / np.maximum(n, 1), n > 0
