"""Stick-figure people for the synthetic dataset: pose sampling, geometry and drawing.

A figure is built in a body frame measured in standing heights (y down, origin between the hip joints).
It faces the viewer, so the person's left side lies on the image's right (+x in the body frame), and
left and right limbs share colour and thickness: left vs right can only be told from the geometry and
the visible face. The frame is then rotated, scaled to pixels and shifted into the image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from yolopose.data.coco_person import COCO_KEYPOINT_NAMES

KPT = {name: i for i, name in enumerate(COCO_KEYPOINT_NAMES)}
SHIFT = 4  # cv2 sub-pixel bits: coordinates are drawn at 1/16 pixel precision
SIDES = {"left": 1.0, "right": -1.0}  # the person's left is +x in the body frame

Color = tuple[int, int, int]


@dataclass
class Shape:
    """One drawn primitive, in image pixels.

    kind: "line" (points (2, 2) end points, radius = half thickness), "circle" (points (1, 2) centre,
    radius) or "poly" (points (P, 2) vertices, radius 0). ``solid`` shapes make up the silhouette: they
    get the dark outline, count for the box, area and mask; face details are not solid.
    """
    kind: str
    points: np.ndarray
    radius: float
    color: Color
    solid: bool = True


@dataclass
class Figure:
    """A posed person: keypoints (K, 2) in image pixels (COCO order) and shapes drawn back to front."""
    keypoints: np.ndarray
    shapes: list[Shape] = field(default_factory=list)
    outline_px: int = 1

    def extent(self) -> np.ndarray:
        """(4,) x0, y0, x1, y1 of the drawn silhouette including its outline, unclipped."""
        lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
        for s in self.shapes:
            if s.solid:
                pad = s.radius + self.outline_px
                lo = np.minimum(lo, s.points.min(0) - pad)
                hi = np.maximum(hi, s.points.max(0) + pad)
        return np.concatenate([lo, hi])

    def moved(self, offset: np.ndarray) -> Figure:
        """A copy shifted by offset (2,) pixels."""
        shapes = [Shape(s.kind, s.points + offset, s.radius, s.color, s.solid) for s in self.shapes]
        return Figure(self.keypoints + offset, shapes, self.outline_px)


def _rot(angle: float) -> np.ndarray:
    """(2, 2) rotation by angle radians (clockwise on screen, since y points down)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _limb_dir(side: float, angle: float) -> np.ndarray:
    """Unit vector ``angle`` radians from straight down, positive angles away from the body midline."""
    return np.array([side * np.sin(angle), np.cos(angle)])


def _random_color(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> Color:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _skin(rng: np.random.Generator) -> Color:
    t = rng.uniform()
    dark, light = np.array([38, 56, 90]), np.array([185, 215, 250])  # BGR
    return tuple(int(c) for c in dark + t * (light - dark))


def _arm_angle(rng: np.random.Generator) -> float:
    """Shoulder angle from hanging down: mostly low, sometimes raised overhead (-20 to 165 deg)."""
    return -0.35 + 3.2 * rng.uniform() ** 1.6


def _leg_angle(rng: np.random.Generator) -> float:
    """Hip angle from straight down: mostly standing or striding, sometimes kicking out (-12 to 63 deg)."""
    return -0.2 + 1.3 * rng.uniform() ** 2


def _foreshorten(rng: np.random.Generator) -> float:
    """Length factor of a segment pointing partly towards the camera."""
    return rng.uniform(0.55, 1.0) if rng.uniform() < 0.3 else 1.0


@dataclass
class _Body:
    """Proportions (in standing heights) and colours of one person; left and right limbs share them."""
    width: float
    torso: float
    head_r: float
    neck: float
    shoulder_w: float
    hip_w: float
    upper_arm: float
    forearm: float
    thigh: float
    shin: float
    arm_r: float
    fore_r: float
    thigh_r: float
    shin_r: float
    skin: Color
    shirt: Color
    pants: Color
    hair: Color
    forearm_color: Color
    shin_color: Color
    shoe: Color


def _sample_body(rng: np.random.Generator) -> _Body:
    width = rng.uniform(0.85, 1.2)
    size = lambda base: base * rng.uniform(0.92, 1.08)  # noqa: E731
    torso, head_r, neck = size(0.34), size(0.075), size(0.03)
    shoulder_w, hip_w = size(0.105) * width, size(0.062) * width
    upper_arm, forearm, thigh, shin = size(0.17), size(0.15), size(0.235), size(0.225)
    arm_r, fore_r = size(0.032) * width, size(0.027) * width
    thigh_r, shin_r = size(0.042) * width, size(0.034) * width
    skin, shirt = _skin(rng), _random_color(rng, (0.25, 1.0), (0.3, 1.0))
    pants = _random_color(rng, (0.1, 0.9), (0.15, 0.8))
    hair = _random_color(rng, (0.2, 0.8), (0.05, 0.6))
    forearm_color = shirt if rng.uniform() < 0.5 else skin
    shin_color = pants if rng.uniform() < 0.7 else skin
    shoe = (int(rng.integers(10, 70)),) * 3
    return _Body(width, torso, head_r, neck, shoulder_w, hip_w, upper_arm, forearm, thigh, shin, arm_r, fore_r,
                 thigh_r, shin_r, skin, shirt, pants, hair, forearm_color, shin_color, shoe)


def _limbs(rng: np.random.Generator, b: _Body, kp: np.ndarray) -> tuple[list[Shape], list[Shape]]:
    """Pose both legs and arms by joint angles; write their joints into kp (K, 2); return (legs, arms)."""
    legs, arms = [], []
    for name, side in SIDES.items():
        hip = np.array([side * b.hip_w, 0.0])
        thigh_angle = _leg_angle(rng)
        knee = hip + b.thigh * _foreshorten(rng) * _limb_dir(side, thigh_angle)
        shin_angle = thigh_angle + rng.choice([-1.0, 1.0]) * 1.4 * rng.uniform() ** 2
        ankle = knee + b.shin * _foreshorten(rng) * _limb_dir(side, shin_angle)
        toe = ankle + 0.055 * _limb_dir(side, shin_angle + 1.1)
        shoulder = np.array([side * b.shoulder_w, -b.torso])
        upper_angle = _arm_angle(rng)
        elbow = shoulder + b.upper_arm * _foreshorten(rng) * _limb_dir(side, upper_angle)
        fore_angle = upper_angle + rng.choice([-1.0, 1.0]) * 2.3 * rng.uniform() ** 1.5
        wrist = elbow + b.forearm * _foreshorten(rng) * _limb_dir(side, fore_angle)
        hand = wrist + 0.025 * _limb_dir(side, fore_angle)
        for joint, xy in (("hip", hip), ("knee", knee), ("ankle", ankle), ("shoulder", shoulder),
                          ("elbow", elbow), ("wrist", wrist)):
            kp[KPT[f"{name}_{joint}"]] = xy
        legs += [Shape("line", np.stack([hip, knee]), b.thigh_r, b.pants),
                 Shape("line", np.stack([knee, ankle]), b.shin_r, b.shin_color),
                 Shape("line", np.stack([ankle, toe]), b.shin_r * 0.9, b.shoe)]
        arms += [Shape("line", np.stack([shoulder, elbow]), b.arm_r, b.shirt),
                 Shape("line", np.stack([elbow, wrist]), b.fore_r, b.forearm_color),
                 Shape("circle", hand[None], b.fore_r * 1.15, b.skin)]
    return legs, arms


def _trunk(rng: np.random.Generator, b: _Body, kp: np.ndarray) -> list[Shape]:
    """Pelvis (trousers) and torso (shirt) polygons spanning the hip and shoulder joints in kp."""
    l_sh, r_sh, l_hip, r_hip = (kp[KPT[n]] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip"))
    waist = -b.torso * rng.uniform(0.2, 0.3)
    trunk = np.array([l_sh + (0.02, -0.018), r_sh + (-0.02, -0.018), (r_hip[0] - 0.01, waist),
                      (l_hip[0] + 0.01, waist)])
    pelvis = np.array([(l_hip[0] + 0.012, waist), (r_hip[0] - 0.012, waist), r_hip + (-0.035, 0.03),
                       l_hip + (0.035, 0.03)])
    return [Shape("poly", pelvis, 0.0, b.pants), Shape("poly", trunk, 0.0, b.shirt)]


def _head(rng: np.random.Generator, b: _Body, kp: np.ndarray) -> list[Shape]:
    """Neck, ears, head, hair and a frontal face (eyes, nose, mouth); writes the face keypoints into kp."""
    tilt, yaw = rng.normal(0.0, 0.12), rng.uniform(-0.25, 0.25)
    r, neck_base, head_frame = b.head_r, np.array([0.0, -b.torso]), _rot(tilt)
    centre = neck_base + head_frame @ np.array([0.0, -(b.neck + r)])
    face = lambda x, y: centre + head_frame @ (np.array([x + yaw * 0.5 * (1 - abs(x)), y]) * r)  # noqa: E731
    kp[KPT["nose"]] = face(0.0, 0.22)
    kp[KPT["left_eye"]], kp[KPT["right_eye"]] = face(0.38, -0.05), face(-0.38, -0.05)
    kp[KPT["left_ear"]], kp[KPT["right_ear"]] = face(1.0, 0.05), face(-1.0, 0.05)
    arc = np.linspace(np.pi * 1.08, np.pi * 1.92, 9)
    hair = centre + (np.stack([np.cos(arc), np.sin(arc)], 1) * r * 1.12) @ head_frame.T
    hair = np.concatenate([hair, (centre + head_frame @ (0.0, -0.5 * r))[None]])
    dark, mouth_color = (25, 25, 25), tuple(int(c * 0.6) for c in b.skin)
    return [Shape("line", np.stack([neck_base, centre]), 0.03 * b.width, b.skin),
            Shape("circle", kp[KPT["left_ear"]][None], 0.24 * r, b.skin),
            Shape("circle", kp[KPT["right_ear"]][None], 0.24 * r, b.skin),
            Shape("circle", centre[None], r, b.skin),
            Shape("poly", hair, 0.0, b.hair),
            Shape("circle", kp[KPT["left_eye"]][None], 0.13 * r, dark, solid=False),
            Shape("circle", kp[KPT["right_eye"]][None], 0.13 * r, dark, solid=False),
            Shape("circle", kp[KPT["nose"]][None], 0.1 * r, mouth_color, solid=False),
            Shape("line", np.stack([face(-0.28, 0.52), face(0.28, 0.52)]), 0.05 * r, mouth_color, solid=False)]


def sample_figure(rng: np.random.Generator, height_px: float, angle: float | None = None) -> Figure:
    """Sample body proportions, colours and joint angles; return a figure of standing height height_px.

    The figure is rotated by ``angle`` radians about the hips (sampled within about +-35 deg when None)
    and placed with its hips at the origin; move it with ``Figure.moved``. Shapes run back to front:
    legs, pelvis, torso, head, arms.
    """
    if angle is None:
        angle = float(np.clip(rng.normal(0.0, 0.2), -0.6, 0.6))
    body = _sample_body(rng)
    kp = np.zeros((len(COCO_KEYPOINT_NAMES), 2))
    legs, arms = _limbs(rng, body, kp)
    shapes = legs + _trunk(rng, body, kp) + _head(rng, body, kp) + arms
    transform = _rot(angle) * height_px
    return Figure(keypoints=kp @ transform.T,
                  shapes=[Shape(s.kind, s.points @ transform.T, s.radius * height_px, s.color, s.solid)
                          for s in shapes],
                  outline_px=max(1, int(round(0.008 * height_px))))


def _draw_shape(canvas: np.ndarray, shape: Shape, pts: np.ndarray, color: Color | tuple[int], pad: float,
                line_type: int) -> None:
    """Draw shape (its points pre-scaled to cv2 fixed point in pts) grown by pad pixels."""
    if shape.kind == "line":
        thickness = max(1, int(round(2 * (shape.radius + pad))))
        cv2.line(canvas, tuple(pts[0]), tuple(pts[1]), color, thickness, line_type, SHIFT)
    elif shape.kind == "circle":
        radius = max(1, int(round((shape.radius + pad) * (1 << SHIFT))))
        cv2.circle(canvas, tuple(pts[0]), radius, color, -1, line_type, SHIFT)
    else:
        cv2.fillPoly(canvas, [pts], color, line_type, SHIFT)
        if pad > 0:
            cv2.polylines(canvas, [pts], True, color, max(1, int(round(2 * pad))), line_type, SHIFT)


def draw_figure(image: np.ndarray, owner: np.ndarray, figure: Figure, owner_id: int) -> None:
    """Draw figure on image (H, W, 3) uint8 BGR and write owner_id into owner (H, W) uint8 under its
    silhouette (outline included), so later drawings reveal which pixels still show this person."""
    for shape in figure.shapes:
        pts = np.round(shape.points * (1 << SHIFT)).astype(np.int32)
        if shape.solid:
            dark = tuple(int(c * 0.4) for c in shape.color)
            _draw_shape(image, shape, pts, dark, figure.outline_px, cv2.LINE_AA)
            _draw_shape(owner, shape, pts, (owner_id,), figure.outline_px, cv2.LINE_8)
        _draw_shape(image, shape, pts, shape.color, 0.0, cv2.LINE_AA)
