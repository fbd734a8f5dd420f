"""Geometric and colour transforms: every keypoint stays on the pixel it was drawn on (letterbox, affine with
rotation/shear, mosaic, flip), the flip swaps left/right, labels leaving the image are dropped or masked,
and letterbox meta maps back to original pixels exactly."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from yolopose.data.augment import AugmentConfig, Plan, TrainAugment
from yolopose.data.sample import Sample
from yolopose.data.transforms import (FILL_VALUE, filter_labels, hflip_matrix, hsv_jitter, letterbox, render,
                                      scaling, swap_left_right, translation, warp_boxes)
from yolopose.postprocess import undo_letterbox

S = 256
NAMES = ["nose", "left_eye", "right_eye", "left_wrist", "right_wrist"]
FLIP = [0, 2, 1, 4, 3]
K = len(FLIP)
# 60 marker colours, pairwise >= 80 apart in some channel, none grey (so none near the 114 padding or black)
PALETTE = np.array([c for c in itertools.product((0, 80, 160, 240), repeat=3) if len(set(c)) > 1])
NO_HSV = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
R = 5  # marker half-size in source pixels: a (2R+1)^2 square around the keypoint's pixel


def marked_samples(rng: np.random.Generator, sizes: list[tuple[int, int]], people: int = 2,
                   marker: int = R) -> tuple[list[Sample], dict[int, tuple[int, int, int]]]:
    """Black images with one distinct-coloured square marker per labelled keypoint.

    Returns the samples and ``owner[palette index] = (image id, person, keypoint slot)``.
    """
    samples, owner = [], {}
    colours = iter(range(len(PALETTE)))
    step = 2 * marker + 4
    for image_id, (h, w) in enumerate(sizes, start=1):
        image = np.zeros((h, w, 3), np.uint8)
        m = marker + 4  # keep markers away from the borders (edges of warped tiles blend)
        cells = [(x, y) for y in range(m, h - m, step) for x in range(m, w - m, step)]
        chosen = rng.choice(len(cells), people * K, replace=False)
        keypoints = np.zeros((people, K, 3), np.float32)
        for n, c in enumerate(chosen):
            p, k = divmod(n, K)
            if rng.random() < 0.15:
                continue  # unlabelled point: no marker, (0, 0, 0)
            cx, cy = cells[c]
            colour = next(colours)
            owner[colour] = (image_id, p, k)
            image[cy - marker:cy + marker + 1, cx - marker:cx + marker + 1] = PALETTE[colour]
            keypoints[p, k] = (cx + rng.uniform(0, 1), cy + rng.uniform(0, 1), rng.choice([1, 2]))
        boxes = np.zeros((people, 4), np.float32)
        for p in range(people):
            pts = keypoints[p][keypoints[p, :, 2] > 0, :2]
            if len(pts) == 0:
                pts = np.array([[w / 2, h / 2]])
            boxes[p] = np.concatenate([pts.min(0) - marker - 1, pts.max(0) + marker + 1]).clip(0, [w, h, w, h])
        samples.append(Sample(image, boxes, keypoints, np.zeros(people, np.int64), np.zeros((0, 4), np.float32),
                              image_id, (h, w)))
    return samples, owner


def check_markers(image: np.ndarray, keypoints: np.ndarray, owner: dict, flipped: bool) -> int:
    """Assert that each labelled output keypoint lies on its own marker; return how many were checked.

    After a flip with swap, slot k holds the point that was drawn for slot ``FLIP[k]``. All keypoints of
    one output object must come from one source person.
    """
    checked = 0
    for o in range(len(keypoints)):
        sources = set()
        for k in range(K):
            x, y, v = keypoints[o, k]
            if v == 0:
                assert x == 0 and y == 0
                continue
            pixel = image[int(np.floor(y)), int(np.floor(x))].astype(int)
            diff = np.abs(PALETTE - pixel).max(axis=1)
            p = int(diff.argmin())
            assert diff[p] <= 30, f"object {o} keypoint {k} at ({x:.2f}, {y:.2f}) lands on {pixel}, not a marker"
            image_id, person, slot = owner[p]
            assert slot == (FLIP[k] if flipped else k), f"object {o} slot {k} shows the marker of slot {slot}"
            sources.add((image_id, person))
            checked += 1
        assert len(sources) <= 1, f"object {o} mixes keypoints of {sources}"
    return checked


def labelled(samples: list[Sample]) -> int:
    return sum(int((s.keypoints[..., 2] > 0).sum()) for s in samples)


# --------------------------------------------------------------------------- keypoints stay on their pixels
@pytest.mark.parametrize("hw", [(100, 160), (160, 100), (300, 400), (90, 70), (256, 256)])
def test_letterbox_keeps_keypoints_on_their_pixels(hw: tuple[int, int]) -> None:
    samples, owner = marked_samples(np.random.default_rng(hw[0]), [hw])
    item = letterbox(samples[0], S)
    assert item.image.shape == (S, S, 3) and item.image.dtype == np.uint8
    assert check_markers(item.image, item.keypoints, owner, flipped=False) == labelled(samples)  # none lost
    assert len(item.boxes) == len(samples[0].boxes)


@pytest.mark.parametrize("degrees, shear", [(0.0, 0.0), (30.0, 0.0), (25.0, 8.0)])
def test_single_image_affine_and_flip_keep_keypoints_on_their_pixels(degrees: float, shear: float) -> None:
    aug = TrainAugment(S, AugmentConfig(mosaic=0.0, degrees=degrees, shear=shear, scale=(0.7, 1.3), **NO_HSV), FLIP)
    checked, flips = 0, set()
    for seed in range(8):
        rng = np.random.default_rng(seed)
        samples, owner = marked_samples(rng, [[(180, 240), (240, 180)][seed % 2]])
        plan = aug.plan(rng, [s.image.shape[:2] for s in samples])
        item = aug.apply(plan, samples)
        checked += check_markers(item.image, item.keypoints, owner, plan.flipped)
        flips.add(plan.flipped)
    assert flips == {False, True}
    assert checked >= 50


@pytest.mark.parametrize("degrees, shear", [(0.0, 0.0), (20.0, 5.0)])
def test_mosaic_keeps_keypoints_on_their_pixels(degrees: float, shear: float) -> None:
    aug = TrainAugment(S, AugmentConfig(mosaic=1.0, degrees=degrees, shear=shear, scale=(0.7, 1.3), **NO_HSV), FLIP)
    checked, sources, flips = 0, set(), set()
    for seed in range(8):
        rng = np.random.default_rng(seed)
        samples, owner = marked_samples(rng, [(192, 256), (256, 192), (200, 200), (150, 256)])
        plan = aug.plan(rng, [s.image.shape[:2] for s in samples])
        item = aug.apply(plan, samples)
        checked += check_markers(item.image, item.keypoints, owner, plan.flipped)
        flips.add(plan.flipped)
        for o in range(len(item.keypoints)):  # which source images reached the output
            k = np.flatnonzero(item.keypoints[o, :, 2] > 0)
            if len(k):
                x, y = item.keypoints[o, k[0], :2].astype(int)
                p = int(np.abs(PALETTE - item.image[y, x].astype(int)).max(1).argmin())
                sources.add(owner[p][0])
    assert flips == {False, True} and sources == {1, 2, 3, 4}
    assert checked >= 50


def test_flip_keeps_keypoints_on_their_exact_pixel() -> None:
    """One-pixel markers, flip at scale 1: x -> S - x, no half-pixel shift between image and labels."""
    samples, owner = marked_samples(np.random.default_rng(0), [(S, S)], people=3, marker=0)
    flip = TrainAugment(S, AugmentConfig(mosaic=0.0, translate=0.0, scale=(1.0, 1.0), fliplr=1.0, **NO_HSV), FLIP)
    item = flip.apply(flip.plan(np.random.default_rng(0), [(S, S)]), samples)
    assert np.array_equal(item.image, samples[0].image[:, ::-1])
    assert check_markers(item.image, item.keypoints, owner, flipped=True) == labelled(samples)
    plain = letterbox(samples[0], S)  # scale 1, no padding: the identity
    assert np.array_equal(plain.image, samples[0].image) and np.array_equal(plain.keypoints, samples[0].keypoints)


def _rotation90(quarter_turns: int) -> np.ndarray:
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][quarter_turns % 4]
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


@pytest.mark.parametrize("matrix", [
    translation(10.3, 7.6),  # sub-pixel shift: the image moves by whole pixels, the labels follow the snap
    translation(-20.7, 33.2),
    hflip_matrix(S) @ translation(5.4, -3.5),
    translation(S, 0) @ _rotation90(1),  # warpAffine path: exact at quarter turns
    translation(S, S) @ _rotation90(2),
    translation(0, S) @ _rotation90(3) @ translation(3, 4),
])
def test_one_pixel_markers_stay_exact(matrix: np.ndarray) -> None:
    samples, owner = marked_samples(np.random.default_rng(1), [(S, S)], people=3, marker=0)
    aug = TrainAugment(S, AugmentConfig(**NO_HSV), FLIP)
    item = aug.apply(Plan([matrix], False, None), samples)
    assert check_markers(item.image, item.keypoints, owner, flipped=False) >= 10


def test_boxes_enclose_their_keypoints_after_rotation() -> None:
    c = s = np.sqrt(0.5)  # 45 degrees
    assert np.allclose(warp_boxes(np.array([[0, 0, 10, 10]], np.float32), np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])),
                       [[-10 * s, 0, 10 * s, 20 * c]], atol=1e-5)
    aug = TrainAugment(S, AugmentConfig(mosaic=1.0, degrees=40.0, shear=10.0, **NO_HSV), FLIP)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        samples, _ = marked_samples(rng, [(192, 256), (256, 192), (200, 200), (150, 256)])
        item = aug.apply(aug.plan(rng, [x.image.shape[:2] for x in samples]), samples)
        for box, kp in zip(item.boxes, item.keypoints):
            xy = kp[kp[:, 2] > 0, :2]
            assert ((xy >= box[:2] - 1e-3) & (xy <= box[2:] + 1e-3)).all()


def test_rotation_and_shear_are_what_they_say() -> None:
    for degrees, shear in ((30.0, 0.0), (0.0, 10.0)):
        cfg = AugmentConfig(mosaic=0.0, degrees=degrees, shear=shear, scale=(1.0, 1.0), fliplr=0.0)
        aug = TrainAugment(S, cfg, FLIP)
        a = aug.plan(np.random.default_rng(0), [(S, S)]).matrices[0][:2, :2]
        if shear == 0:  # a proper rotation
            assert np.allclose(a @ a.T, np.eye(2)) and np.linalg.det(a) == pytest.approx(1.0)
            assert not np.allclose(a, np.eye(2))
        else:  # YOLOv5's shear: both off-diagonal terms random, unit diagonal
            assert np.allclose(np.diag(a), 1) and not np.allclose(a @ a.T, np.eye(2))


# --------------------------------------------------------------------------- flip: identity twice, left/right swap
def test_flip_twice_is_identity() -> None:
    assert np.allclose(hflip_matrix(S) @ hflip_matrix(S), np.eye(3))
    kp = np.random.default_rng(0).uniform(0, S, (3, K, 3)).astype(np.float32)
    once = swap_left_right(kp, np.array(FLIP))
    assert not np.array_equal(once, kp) and np.array_equal(once[:, 1], kp[:, 2])
    assert np.array_equal(swap_left_right(once, np.array(FLIP)), kp)
    image = np.random.default_rng(1).integers(0, 256, (S, S, 3), dtype=np.uint8)
    flipped, _ = render([(image, hflip_matrix(S))], S)
    assert np.array_equal(flipped, image[:, ::-1])
    back, _ = render([(flipped, hflip_matrix(S))], S)
    assert np.array_equal(back, image)


def _person_facing_viewer() -> Sample:
    """One person whose left side is on the image right (as photographed people are)."""
    kp = np.array([[[100, 60, 2], [110, 50, 2], [90, 50, 2], [130, 120, 1], [70, 120, 2]]], np.float32)
    return Sample(np.zeros((200, 200, 3), np.uint8), np.array([[60, 40, 140, 130]], np.float32), kp,
                  np.zeros(1, np.int64), np.zeros((0, 4), np.float32), 1, (200, 200))


@pytest.mark.parametrize("mosaic", [0.0, 1.0])
def test_flip_exchanges_left_and_right_labels(mosaic: float) -> None:
    sample = _person_facing_viewer()
    samples = [sample] * (4 if mosaic else 1)
    items = {}
    for fliplr, swap in ((0.0, True), (1.0, True), (1.0, False)):
        aug = TrainAugment(S, AugmentConfig(mosaic=mosaic, fliplr=fliplr, flip_swap=swap, **NO_HSV), FLIP)
        rng = np.random.default_rng(3)
        items[fliplr, swap] = aug.apply(aug.plan(rng, [(200, 200)] * len(samples)), samples)
    plain, flipped, unswapped = items[0.0, True], items[1.0, True], items[1.0, False]
    assert len(plain.keypoints) == len(flipped.keypoints) > 0
    mirrored = plain.keypoints[:, FLIP].copy()
    mirrored[..., 0] = np.where(mirrored[..., 2] > 0, S - mirrored[..., 0], 0)
    assert np.allclose(flipped.keypoints, mirrored, atol=1.0)  # < 0.5 px snapping in each render
    assert np.allclose(flipped.boxes[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [S, 0, S, 0], plain.boxes, atol=1.0)
    for it in (plain, flipped):  # a mirrored person still faces the viewer: left stays on the image right
        assert (it.keypoints[:, 1, 0] > it.keypoints[:, 2, 0]).all()
        assert (it.keypoints[:, 3, 0] > it.keypoints[:, 4, 0]).all()
    assert (unswapped.keypoints[:, 1, 0] < unswapped.keypoints[:, 2, 0]).all()  # the ablation: no swap
    assert np.array_equal(unswapped.keypoints[:, FLIP], flipped.keypoints)


# --------------------------------------------------------------------------- labels leaving the image
def test_keypoints_and_boxes_leaving_the_output() -> None:
    """Shift a 100 x 100 image 40 px left into a 100 x 100 output."""
    kp = np.zeros((4, K, 3), np.float32)
    kp[0, :3] = [[15, 20, 2], [55, 30, 1], [39.9, 40, 2]]  # partly out
    kp[1, 0] = [20, 10, 2]  # its box keeps < 10% of its area
    kp[2, 0] = [70.5, 80, 2]  # box 1.5 px wide: dropped
    kp[3, :3] = [[95, 50, 2], [139.5, 60, 2], [140, 65, 2]]  # right edge: 99.5 is in, 100 is out
    boxes = np.array([[10, 10, 60, 60], [0, 0, 42, 30], [70, 70, 71.5, 90], [90, 40, 145, 70]], np.float32)
    crowd = np.array([[0, 0, 30, 100], [30, 0, 100, 20]], np.float32)
    sample = Sample(np.zeros((100, 100, 3), np.uint8), boxes, kp, np.array([0, 1, 2, 3]), crowd, 1, (100, 100))
    aug = TrainAugment(100, AugmentConfig(**NO_HSV), FLIP)
    item = aug.apply(Plan([translation(-40, 0)], False, None), [sample])
    assert item.classes.tolist() == [0, 3]  # persons 1 and 2 dropped, with their keypoints
    assert item.keypoints.shape == (2, K, 3)
    assert np.allclose(item.boxes, [[0, 10, 20, 60], [50, 40, 100, 70]])
    assert item.keypoints[0, :3].tolist() == [[0, 0, 0], [15, 30, 1], [0, 0, 0]]  # 39.9 - 40 < 0: out
    assert item.keypoints[1, :3].tolist() == [[55, 50, 2], [99.5, 60, 2], [0, 0, 0]]
    assert np.allclose(item.crowd_boxes, [[0, 0, 60, 20]])  # the first region left entirely


def test_random_zoom_masks_every_keypoint_outside() -> None:
    aug = TrainAugment(S, AugmentConfig(mosaic=1.0, scale=(1.8, 2.2), degrees=10, **NO_HSV), FLIP)
    total_in = total_out = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        samples, owner = marked_samples(rng, [(192, 256), (256, 192), (200, 200), (150, 256)])
        plan = aug.plan(rng, [s.image.shape[:2] for s in samples])
        item = aug.apply(plan, samples)
        v = item.keypoints[..., 2] > 0
        xy = item.keypoints[..., :2]
        assert ((xy[v] >= 0) & (xy[v] < S)).all() and (xy[~v] == 0).all()
        assert ((item.boxes >= 0) & (item.boxes <= S)).all()
        assert (item.boxes[:, 2:] - item.boxes[:, :2] >= 2).all()
        total_out += check_markers(item.image, item.keypoints, owner, plan.flipped)
        total_in += labelled(samples)
    assert 0 < total_out < total_in / 2  # zoomed in 2x: most points left the view


def test_filter_labels_drops_tiny_and_mostly_cut_boxes() -> None:
    boxes = np.array([[10, 10, 11.9, 50], [-100, 0, 9, 100], [-40, 0, 10, 100], [5, 5, 50, 50]], np.float32)
    kp = np.arange(4 * K * 3, dtype=np.float32).reshape(4, K, 3) % 40 + 1
    b, k, c, crowd = filter_labels(boxes, kp, np.arange(4), np.zeros((0, 4), np.float32), 100)
    assert c.tolist() == [2, 3]  # 1.9 px wide: dropped; 8% left in view: dropped; 20% left: kept
    assert np.array_equal(k, kp[[2, 3]]) and np.allclose(b, [[0, 0, 10, 100], [5, 5, 50, 50]])


# --------------------------------------------------------------------------- colour
def test_hsv_jitter_changes_colour_only() -> None:
    cfg = AugmentConfig(mosaic=1.0, degrees=10.0, hsv_h=0.1, hsv_s=0.7, hsv_v=0.4)
    aug = TrainAugment(S, cfg, FLIP)
    rng = np.random.default_rng(5)
    samples, _ = marked_samples(rng, [(192, 256), (256, 192), (200, 200), (150, 256)])
    plan = aug.plan(rng, [s.image.shape[:2] for s in samples])
    coloured = aug.apply(plan, samples)
    plain = aug.apply(dataclasses.replace(plan, hsv_gains=None), samples)
    for field in ("boxes", "keypoints", "classes", "crowd_boxes"):
        assert np.array_equal(getattr(coloured, field), getattr(plain, field))
    assert not np.array_equal(coloured.image, plain.image)
    assert np.array_equal(coloured.image, hsv_jitter(plain.image.copy(), plan.hsv_gains))
    # decoded BGR in, RGB out: the same item
    bgr = [dataclasses.replace(s, image=np.ascontiguousarray(s.image[..., ::-1])) for s in samples]
    assert np.array_equal(aug.apply(plan, bgr, bgr=True).image, coloured.image)
    assert np.array_equal(aug.apply(dataclasses.replace(plan, hsv_gains=None), bgr, bgr=True).image, plain.image)


def test_hsv_jitter_with_unit_gains_roughly_keeps_colours() -> None:
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = hsv_jitter(image.copy(), np.array([0.0, 1.0, 1.0]))
    assert np.abs(out.astype(int) - image).mean() < 3
    shifted = hsv_jitter(image.copy(), np.array([0.5, 1.0, 1.0]))
    assert np.abs(shifted.astype(int) - image).mean() > 30


# --------------------------------------------------------------------------- validation meta
@pytest.mark.parametrize("hw", [(333, 517), (517, 333), (480, 640), (100, 100), (50, 700), (641, 639)])
def test_letterbox_meta_maps_back_to_original_pixels(hw: tuple[int, int]) -> None:
    h, w = hw
    rng = np.random.default_rng(h * w)
    xy = rng.uniform([0, 0], [w / 2, h / 2], (6, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, [w / 2, h / 2], (6, 2))], 1).astype(np.float32)
    kp = np.concatenate([rng.uniform([0, 0], [w, h], (6, K, 2)), np.full((6, K, 1), 2)], -1).astype(np.float32)
    sample = Sample(np.full((h, w, 3), 50, np.uint8), boxes, kp, np.zeros(6, np.int64), np.zeros((0, 4), np.float32),
                    7, (h, w))
    item = letterbox(sample, 320)
    meta = item.meta
    assert meta["image_id"] == 7 and meta["orig_size"] == (h, w) and len(item.boxes) == 6
    b, k = undo_letterbox(torch.from_numpy(item.boxes), torch.from_numpy(item.keypoints), meta["scale"],
                          meta["pad"], meta["orig_size"])
    assert torch.allclose(b, torch.from_numpy(boxes), atol=1e-3)
    assert torch.allclose(k[..., :2], torch.from_numpy(kp[..., :2]), atol=1e-3)
    # and the pixels: the image content sits exactly where the meta says (padding outside, image inside)
    px, py = meta["pad"]
    nw, nh = round(w * meta["scale"]), round(h * meta["scale"])
    inside = item.image[py:py + nh, px:px + nw]
    assert (inside == 50).all() and (item.image == FILL_VALUE).sum() == 3 * (320 * 320 - nw * nh)


@pytest.mark.parametrize("hw", [(333, 500), (425, 640), (517, 333), (100, 100), (641, 639)])
def test_training_without_augmentation_is_the_validation_letterbox(hw: tuple[int, int]) -> None:
    """No mosaic, translation, zoom, flip or colour: training must see exactly the validation input (a
    one-pixel shift between the two was enough to break the overfit check on real images)."""
    samples, _ = marked_samples(np.random.default_rng(hw[1]), [hw])
    cfg = AugmentConfig(mosaic=0.0, translate=0.0, scale=(1.0, 1.0), fliplr=0.0, **NO_HSV)
    aug = TrainAugment(320, cfg, FLIP)
    train = aug.apply(aug.plan(np.random.default_rng(0), [hw]), samples)
    val = letterbox(samples[0], 320)
    assert np.array_equal(train.image, val.image)
    assert np.allclose(train.keypoints, val.keypoints, atol=1e-4) and np.allclose(train.boxes, val.boxes, atol=1e-4)
    assert np.allclose(train.meta["pad"], val.meta["pad"]) and train.meta["scale"] == pytest.approx(val.meta["scale"])


def test_scaling_and_translation_compose_like_matrices() -> None:
    m = translation(3, 4) @ scaling(2, 0.5)
    assert np.allclose(m @ [1, 1, 1], [5, 4.5, 1])


@pytest.mark.parametrize("bgr", [False, True])
def test_hsv_jitter_plane_by_plane_equals_the_three_channel_lookup(bgr: bool) -> None:
    from benchmarks.data_pipeline import former_hsv_jitter   # the former implementation, the benchmark's reference

    rng = np.random.default_rng(0)
    for _ in range(30):
        image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        gains = rng.uniform(-1, 1, 3) * np.array([0.015, 0.7, 0.4]) + np.array([0, 1, 1])
        assert np.array_equal(hsv_jitter(image.copy(), gains, bgr), former_hsv_jitter(image.copy(), gains, bgr))
