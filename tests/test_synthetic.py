"""The built-in synthetic people dataset: COCO validity, labels, conventions, determinism and caching."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from yolopose.synthetic import generate as synthetic
from yolopose.data.coco_person import COCO_KEYPOINT_NAMES
from yolopose.synthetic import SyntheticConfig, ensure_synthetic_dataset, scene_images, write_synthetic_dataset
from yolopose.synthetic.figure import sample_figure
from yolopose.synthetic.preview import LEFT, RIGHT, draw_annotations
from yolopose.synthetic.scene import keypoint_labels, render_scene

K = {name: i for i, name in enumerate(COCO_KEYPOINT_NAMES)}
SMALL = dict(num_train=60, num_val=12, image_size=192)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """A default-settings dataset at a small size: (train COCO dict, train image dir)."""
    paths = write_synthetic_dataset(tmp_path_factory.mktemp("syn"), SyntheticConfig(**SMALL))
    return json.loads(paths.train_ann.read_text()), paths.train_images


def _keypoints(coco: dict) -> np.ndarray:
    """(N, K, 3) keypoints of all annotations."""
    return np.array([a["keypoints"] for a in coco["annotations"]], float).reshape(-1, len(COCO_KEYPOINT_NAMES), 3)


def _image_sizes(coco: dict) -> np.ndarray:
    """(N, 2) width, height of each annotation's image."""
    size = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    return np.array([size[a["image_id"]] for a in coco["annotations"]], float)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    config = SyntheticConfig(num_train=6, num_val=2, image_size=128, seed=7)
    a = write_synthetic_dataset(tmp_path / "a", config)
    b = write_synthetic_dataset(tmp_path / "b", config)
    c = write_synthetic_dataset(tmp_path / "c", SyntheticConfig(num_train=6, num_val=2, image_size=128, seed=8))
    assert a.train_ann.read_bytes() == b.train_ann.read_bytes()
    assert a.val_ann.read_bytes() == b.val_ann.read_bytes()
    for image in sorted(a.train_images.glob("*.jpg")) + sorted(a.val_images.glob("*.jpg")):
        assert image.read_bytes() == (tmp_path / "b" / image.parent.name / image.name).read_bytes()
    assert a.train_ann.read_bytes() != c.train_ann.read_bytes()
    first_a = cv2.imread(str(a.train_images / "000000.jpg"))
    first_c = cv2.imread(str(c.train_images / "000000.jpg"))
    assert first_a.shape != first_c.shape or not np.array_equal(first_a, first_c)


def test_pycocotools_scores_ground_truth_as_results_at_ap_one(tmp_path: Path) -> None:
    paths = write_synthetic_dataset(tmp_path, SyntheticConfig(num_train=0, num_val=24, image_size=192))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(paths.val_ann))
        results = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
                   for a in gt.dataset["annotations"]]
        evaluator = COCOeval(gt, gt.loadRes(results), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert len(results) > 20
    assert evaluator.stats[0] == pytest.approx(1.0)
    assert gt.loadCats(1)[0]["keypoints"] == list(COCO_KEYPOINT_NAMES)


def test_every_field_is_valid_coco(dataset: tuple[dict, Path]) -> None:
    coco, image_dir = dataset
    for im in coco["images"]:
        assert max(im["width"], im["height"]) == SMALL["image_size"]
        assert cv2.imread(str(image_dir / im["file_name"])).shape == (im["height"], im["width"], 3)
    assert len({(im["width"], im["height"]) for im in coco["images"]}) == 3  # 4:3, 3:4 and square
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    kpts, sizes = _keypoints(coco), _image_sizes(coco)
    for ann, kp, (w, h) in zip(coco["annotations"], kpts, sizes):
        assert ann["category_id"] == 1 and ann["iscrowd"] == 0 and ann["area"] > 0
        x, y, bw, bh = ann["bbox"]
        assert bw > 0 and bh > 0 and x >= 0 and y >= 0 and x + bw <= w + 1e-6 and y + bh <= h + 1e-6
        assert set(np.unique(kp[:, 2])) <= {0, 1, 2}
        assert ann["num_keypoints"] == int((kp[:, 2] > 0).sum())
        unlabelled, labelled = kp[kp[:, 2] == 0], kp[kp[:, 2] > 0]
        assert (unlabelled[:, :2] == 0).all()
        assert (labelled[:, 0] >= x).all() and (labelled[:, 0] <= x + bw).all()
        assert (labelled[:, 1] >= y).all() and (labelled[:, 1] <= y + bh).all()
        assert (labelled[:, 0] <= w - 1).all() and (labelled[:, 1] <= h - 1).all()


def test_keypoints_outside_the_image_are_unlabelled_and_covered_ones_occluded() -> None:
    figure = sample_figure(np.random.default_rng(0), 100.0, angle=0.0).moved(np.array([20.0, 60.0]))
    owner = np.ones((80, 50), np.uint8)  # person 1 everywhere ...
    owner[:, 30:] = 2  # ... except where person 2 covers it
    labels = keypoint_labels(figure, owner, owner_id=1)
    x, y = figure.keypoints.T
    outside = (x < 0) | (x > 49) | (y < 0) | (y > 79)
    assert outside.any() and (~outside).any()
    assert (labels[outside] == 0).all()
    assert (labels[~outside, :2] == figure.keypoints[~outside]).all()
    covered = ~outside & (np.round(x) >= 30)
    assert covered.any()
    assert (labels[covered, 2] == 1).all() and (labels[~outside & ~covered, 2] == 2).all()


def test_people_face_the_viewer_so_their_left_is_on_the_image_right(dataset: tuple[dict, Path]) -> None:
    for seed in range(20):
        kp = sample_figure(np.random.default_rng(seed), 200.0, angle=0.0).keypoints
        for part in ("shoulder", "hip", "eye", "ear"):
            assert kp[K[f"left_{part}"], 0] > kp[K[f"right_{part}"], 0]
    kpts = _keypoints(dataset[0])  # rotations are modest, so this holds for every generated person
    both = (kpts[:, K["left_shoulder"], 2] > 0) & (kpts[:, K["right_shoulder"], 2] > 0)
    assert both.sum() > 50
    assert (kpts[both, K["left_shoulder"], 0] > kpts[both, K["right_shoulder"], 0]).all()


def test_occlusion_and_truncation_are_present(dataset: tuple[dict, Path]) -> None:
    kpts, sizes = _keypoints(dataset[0]), _image_sizes(dataset[0])
    boxes = np.array([a["bbox"] for a in dataset[0]["annotations"]])
    assert (kpts[..., 2] == 1).any(axis=1).mean() > 0.1
    at_border = (boxes[:, 0] <= 0) | (boxes[:, 1] <= 0) | (boxes[:, :2] + boxes[:, 2:] >= sizes - 1e-6).any(1)
    truncated = at_border & (kpts[..., 2] == 0).any(axis=1) & (kpts[..., 2] > 0).any(axis=1)
    assert truncated.sum() >= 5


@pytest.mark.parametrize("occlusion, truncation", [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)])
def test_occlusion_and_truncation_follow_their_probabilities(tmp_path: Path, occlusion: float,
                                                             truncation: float) -> None:
    """Lone people that fit the image: only occluders make v=1 and only truncation makes v=0."""
    config = SyntheticConfig(num_train=30, num_val=0, image_size=160, max_people=1, max_person_height=0.6,
                             occlusion_prob=occlusion, truncation_prob=truncation)
    kpts = _keypoints(json.loads(write_synthetic_dataset(tmp_path, config).train_ann.read_text()))
    assert len(kpts) > 10
    occluded, cut = (kpts[..., 2] == 1).any(axis=1).mean(), (kpts[..., 2] == 0).any(axis=1).mean()
    assert (occluded > 0.5) == (occlusion == 1.0) and (occluded == 0) == (occlusion == 0.0)
    assert (cut > 0.5) == (truncation == 1.0) and (cut == 0) == (truncation == 0.0)


def test_people_come_in_small_and_large_scales(dataset: tuple[dict, Path]) -> None:
    boxes, sizes = np.array([a["bbox"] for a in dataset[0]["annotations"]]), _image_sizes(dataset[0])
    whole = (_keypoints(dataset[0])[..., 2] > 0).all(axis=1)
    rel_height = boxes[whole, 3] / sizes[whole, 1]
    assert (rel_height < 0.25).sum() >= 5
    assert (rel_height > 0.6).sum() >= 5


def test_dataset_is_generated_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = SyntheticConfig(root=str(tmp_path), num_train=3, num_val=2, image_size=96)
    first = ensure_synthetic_dataset(config)
    assert first.train_ann.parent.name.startswith(f"synthetic-{synthetic.SYNTHETIC_VERSION}-")
    assert len(list(first.train_images.glob("*.jpg"))) == 3 and len(list(first.val_images.glob("*.jpg"))) == 2
    stamp = first.train_ann.stat().st_mtime_ns

    def refuse(*args: object) -> None:
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(synthetic, "write_synthetic_dataset", refuse)
    assert ensure_synthetic_dataset(config) == first
    assert first.train_ann.stat().st_mtime_ns == stamp
    other = SyntheticConfig(root=str(tmp_path), num_train=3, num_val=2, image_size=96, seed=1)
    with pytest.raises(AssertionError, match="regenerated"):
        ensure_synthetic_dataset(other)  # a different config is a different dataset
    assert [p.name for p in tmp_path.iterdir()] == [first.train_ann.parent.name]  # no temporary left


def test_losing_a_generation_race_uses_the_winners_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = SyntheticConfig(root=str(tmp_path), num_train=2, num_val=1, image_size=96)
    final = synthetic.dataset_dir(config)
    real_writer = synthetic.write_synthetic_dataset

    def another_rank_finishes_first(out_dir: Path, cfg: SyntheticConfig) -> synthetic.SyntheticPaths:
        real_writer(final, cfg)
        return real_writer(out_dir, cfg)

    monkeypatch.setattr(synthetic, "write_synthetic_dataset", another_rank_finishes_first)
    paths = ensure_synthetic_dataset(config)
    assert paths.train_ann == final / "train.json" and (final / synthetic.MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_cli_writes_a_dataset_and_a_preview(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    synthetic.main(["--out", str(tmp_path / "d"), "--num-train", "2", "--num-val", "4", "--image-size", "128",
                    "--max-people", "3", "--preview", str(tmp_path / "sheet.png")])
    coco = json.loads((tmp_path / "d" / "val.json").read_text())
    assert len(coco["images"]) == 4 and coco["info"]["config"]["max_people"] == 3
    assert cv2.imread(str(tmp_path / "sheet.png")) is not None
    assert "wrote 2 train + 4 val" in capsys.readouterr().out


def test_preview_marks_left_and_right_keypoints_in_their_colours() -> None:
    ann = {"bbox": [5, 5, 50, 50], "keypoints": [0, 0, 0] * len(COCO_KEYPOINT_NAMES)}
    ann["keypoints"][3 * K["left_wrist"]:3 * K["left_wrist"] + 3] = [40, 30, 2]
    ann["keypoints"][3 * K["right_wrist"]:3 * K["right_wrist"] + 3] = [20, 30, 2]
    category = {"keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": []}
    drawn = draw_annotations(np.zeros((64, 64, 3), np.uint8), [ann], category)
    assert tuple(drawn[30, 40]) == LEFT and tuple(drawn[30, 20]) == RIGHT


def test_scene_images_are_reproducible_rgb_scenes() -> None:
    images = scene_images(3, 96, 72, seed=5)
    assert [im.shape for im in images] == [(72, 96, 3)] * 3 and all(im.dtype == np.uint8 for im in images)
    assert all(np.array_equal(a, b) for a, b in zip(images, scene_images(3, 96, 72, seed=5)))
    assert np.array_equal(images[1], scene_images(1, 96, 72, seed=6)[0])  # image i comes from seed + i
    bgr, _ = render_scene(np.random.default_rng(5), SyntheticConfig(), 96, 72)
    assert np.array_equal(images[0], bgr[..., ::-1])  # RGB, as the data layer and preprocessing expect
    assert not np.array_equal(images[0], images[1])
