"""The albumentations stage: keypoints stay on their pixels through albumentations' spatial transforms, each
person's keypoints stay together, mirrors swap left/right (or are refused), bad entries are one-line errors
before training, validation is untouched, and a YAML list reaches the dataset through the real CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from yolopose.cli import main
from yolopose.data.albu import DEFAULT_ALBUMENTATIONS, AlbumentationsStage
from yolopose.data.datamodule import PoseDataModule
from yolopose.data.sample import DatasetError
from yolopose.synthetic import SyntheticConfig, ensure_synthetic_dataset
from yolopose.data.transforms import Item

S = 192
K = 5
FLIP = np.array([0, 2, 1, 4, 3])
SIGMA = 2.0  # blob radius in px
FILL = {"border_mode": 0, "fill": 0}  # black border: no stray mass near the blobs


def entry(name: str, **args: object) -> dict:
    return {"class_path": name, "init_args": args}


def blob_item(rng: np.random.Generator, people: int = 3) -> Item:
    """Black S x S image; person p's labelled keypoints are Gaussian blobs in colour channel p, >= 20 px apart."""
    points: list[np.ndarray] = []
    while len(points) < people * K:
        xy = rng.uniform(30, S - 30, 2)
        if all(np.hypot(*(xy - q)) >= 20 for q in points):
            points.append(xy)
    xy = np.array(points, np.float32).reshape(people, K, 2)
    v = rng.choice([0, 1, 2], (people, K), p=[0.1, 0.3, 0.6]).astype(np.float32)
    v[:, 0] = 2
    keypoints = np.concatenate([xy * (v[..., None] > 0), v[..., None]], -1)
    yy, xx = np.mgrid[0:S, 0:S] + 0.5  # pixel centres in continuous coordinates
    image = np.zeros((S, S, 3), np.float32)
    for p in range(people):
        for x, y, vis in keypoints[p]:
            if vis > 0:
                image[..., p] += 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * SIGMA ** 2))
    lo, hi = xy.min(1) - 8, xy.max(1) + 8
    boxes = np.concatenate([lo, hi], 1).clip(0, S)
    return Item(image.clip(0, 255).astype(np.uint8), boxes.astype(np.float32), keypoints,
                np.zeros(people, np.int64), np.zeros((0, 4), np.float32), {})


def blob_centre(image: np.ndarray, xy: np.ndarray, channel: int, radius: int = 6) -> tuple[np.ndarray, float]:
    """Intensity centroid (continuous coordinates) of ``channel`` within ``radius`` px of ``xy``, and its mass."""
    x0, y0 = (np.floor(xy) - radius).astype(int).clip(0, S)
    x1, y1 = (np.floor(xy) + radius + 1).astype(int).clip(0, S)
    w = image[y0:y1, x0:x1, channel].astype(np.float64)
    yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
    mass = w.sum()
    return np.array([(w * xx).sum(), (w * yy).sum()]) / max(mass, 1e-9), mass


def check_blobs(out: Item, source: Item, mirrored: bool) -> int:
    """Every labelled output keypoint sits within 1 px of a blob of its own person's colour, in the slot its
    blob was drawn for (the partner slot after a mirror); return how many were checked."""
    checked = 0
    full_mass = 255 * 2 * np.pi * SIGMA ** 2
    for o in range(len(out.keypoints)):
        for k in range(K):
            x, y, v = out.keypoints[o, k]
            if v == 0:
                assert x == 0 and y == 0
                continue
            assert 0 <= x < S and 0 <= y < S
            if not (3 * SIGMA <= x < S - 3 * SIGMA and 3 * SIGMA <= y < S - 3 * SIGMA):
                continue  # a blob cut by the border has its centroid moved inwards
            masses = [blob_centre(out.image, np.array([x, y]), c)[1] for c in range(3)]
            channel = int(np.argmax(masses))
            centre, mass = blob_centre(out.image, np.array([x, y]), channel)
            assert mass > 0.25 * full_mass, f"object {o} keypoint {k} at ({x:.1f}, {y:.1f}) is on no blob"
            assert np.hypot(*(centre - [x, y])) < 1.0, f"object {o} keypoint {k}: blob at {centre}, label ({x}, {y})"
            src = source.keypoints[channel, FLIP[k] if mirrored else k]
            assert src[2] == v, f"object {o} slot {k} carries the visibility of another keypoint"
            checked += 1
        people = {int(np.argmax([blob_centre(out.image, out.keypoints[o, k, :2], c)[1] for c in range(3)]))
                  for k in range(K) if out.keypoints[o, k, 2] > 0}
        assert len(people) <= 1, f"object {o} mixes keypoints of persons {people}"
    return checked


def check_labels(out: Item) -> None:
    assert out.image.shape == (S, S, 3) and out.image.dtype == np.uint8
    assert ((out.boxes >= 0) & (out.boxes <= S)).all()
    assert (out.boxes[:, 2:] - out.boxes[:, :2] >= 2).all()
    assert len(out.boxes) == len(out.keypoints) == len(out.classes)


# --------------------------------------------------------------------------- alignment
@pytest.mark.parametrize("transform", [
    entry("Perspective", scale=[0.05, 0.1], p=1.0, **FILL),
    entry("Rotate", limit=[-40, 40], p=1.0, **FILL),
    entry("RandomResizedCrop", size=[S, S], scale=[0.4, 0.9], p=1.0),
    entry("Affine", rotate=[-20, 20], shear=[-10, 10], scale=[0.8, 1.2], p=1.0, **FILL),
])
def test_keypoints_stay_on_their_blobs_through_spatial_transforms(transform: dict) -> None:
    stage = AlbumentationsStage([transform], S)
    checked = dropped = 0
    for seed in range(6):
        source = blob_item(np.random.default_rng(seed))
        out = stage(Item(source.image.copy(), source.boxes.copy(), source.keypoints.copy(), source.classes,
                         source.crowd_boxes, {}), seed, FLIP)
        check_labels(out)
        checked += check_blobs(out, source, mirrored=False)
        dropped += int((source.keypoints[..., 2] > 0).sum() - (out.keypoints[..., 2] > 0).sum())
    assert checked >= 40
    if transform["class_path"] == "RandomResizedCrop":
        assert dropped > 0  # the crop pushed some keypoints out: they got v = 0 (checked above)


def test_keypoints_leaving_the_image_get_v0_and_mostly_cut_people_are_dropped() -> None:
    """A crop to the top-left quarter, zoomed 2x: everything outside it leaves."""
    stage = AlbumentationsStage([entry("Crop", x_min=0, y_min=0, x_max=S // 2, y_max=S // 2, p=1.0),
                                 entry("Resize", height=S, width=S, p=1.0)], S)
    kp = np.zeros((3, K, 3), np.float32)
    kp[0, :2] = [[20, 20, 2], [150, 30, 2]]  # box 10-160: half in view
    kp[1, 0] = [170, 170, 2]  # entirely outside
    kp[2, :2] = [[90, 20, 1], [100, 40, 2]]  # box 85-140 x 15-45: 11 of 55 px wide in view (20%)
    boxes = np.array([[10, 10, 160, 40], [160, 160, 180, 180], [85, 15, 140, 45]], np.float32)
    item = Item(np.zeros((S, S, 3), np.uint8), boxes, kp, np.array([0, 1, 2]), np.zeros((0, 4), np.float32), {})
    out = stage(item, 0, FLIP)
    assert out.classes.tolist() == [0, 2]
    assert np.allclose(out.boxes, [[20, 20, 192, 80], [170, 30, 192, 90]], atol=1e-3)
    # albumentations scales keypoints on pixel-centre indices: at 2x zoom they land 0.5 px short of x -> 2x
    assert np.allclose(out.keypoints[0, :2], [[40, 40, 2], [0, 0, 0]], atol=0.51)
    assert np.allclose(out.keypoints[1, :2], [[180, 40, 1], [0, 0, 0]], atol=0.51)


def test_item_without_people_keeps_its_crowd_regions() -> None:
    stage = AlbumentationsStage([entry("HorizontalFlip", p=1.0), entry("Rotate", limit=[10, 10], p=1.0)], S)
    item = Item(np.zeros((S, S, 3), np.uint8), np.zeros((0, 4), np.float32), np.zeros((0, K, 3), np.float32),
                np.zeros(0, np.int64), np.array([[10, 10, 60, 50]], np.float32), {})
    out = stage(item, 0, FLIP)
    assert out.boxes.shape == (0, 4) and out.keypoints.shape == (0, K, 3) and out.classes.shape == (0,)
    assert out.crowd_boxes.shape == (1, 4) and (out.crowd_boxes[0, :2] > S / 2).any()  # mirrored to the right


# --------------------------------------------------------------------------- mirrors
def test_horizontal_flip_is_exact_and_swaps_left_and_right() -> None:
    """x -> S - x for pixels, boxes and keypoints alike (albumentations alone flips keypoints to S - 1 - x)."""
    source = blob_item(np.random.default_rng(0))
    out = AlbumentationsStage([entry("HorizontalFlip", p=1.0)], S)(
        Item(source.image.copy(), source.boxes, source.keypoints, source.classes, source.crowd_boxes, {}), 0, FLIP)
    assert np.array_equal(out.image, source.image[:, ::-1])
    expected = source.keypoints[:, FLIP].copy()
    expected[..., 0] = np.where(expected[..., 2] > 0, S - expected[..., 0], 0)
    assert np.allclose(out.keypoints, expected, atol=1e-4)
    assert np.allclose(out.boxes, np.stack([S - source.boxes[:, 2], source.boxes[:, 1], S - source.boxes[:, 0],
                                            source.boxes[:, 3]], 1), atol=1e-4)
    assert check_blobs(out, source, mirrored=True) > 10


@pytest.mark.parametrize("transforms, mirrored", [
    ([entry("VerticalFlip", p=1.0)], True),
    ([entry("Transpose", p=1.0)], True),
    ([entry("HorizontalFlip", p=1.0), entry("VerticalFlip", p=1.0)], False),  # two mirrors: a half turn
    ([entry("RandomRotate90", p=1.0)], False),
])
def test_mirrors_swap_left_and_right_and_rotations_do_not(transforms: list[dict], mirrored: bool) -> None:
    source = blob_item(np.random.default_rng(1))
    out = AlbumentationsStage(transforms, S)(
        Item(source.image.copy(), source.boxes, source.keypoints, source.classes, source.crowd_boxes, {}), 2, FLIP)
    check_labels(out)
    assert check_blobs(out, source, mirrored=mirrored) >= 12


def test_d4_swaps_exactly_for_its_reflections() -> None:
    stage = AlbumentationsStage([entry("D4", p=1.0)], S)
    seen = set()
    for seed in range(40):
        source = blob_item(np.random.default_rng(seed))
        out = stage(Item(source.image.copy(), source.boxes, source.keypoints, source.classes,
                         source.crowd_boxes, {}), seed, FLIP)
        element = str(stage.compose.transforms[0].params["group_element"])
        seen.add(element)
        check_blobs(out, source, mirrored=element in {"h", "v", "t", "hvt"})
    assert len(seen) == 8


def test_mirror_inside_a_composition_is_refused_naming_it() -> None:
    with pytest.raises(DatasetError) as exc:
        AlbumentationsStage([entry("Blur", p=0.1), entry("OneOf", transforms=[entry("GaussNoise"),
                                                                               entry("HorizontalFlip")])], S)
    message = str(exc.value)
    assert "\n" not in message and "data.albumentations[1]" in message and "HorizontalFlip" in message
    assert "--data.fliplr" in message


# --------------------------------------------------------------------------- bad entries
@pytest.mark.parametrize("entries, expected", [
    ([entry("Blurr", p=0.5)], "data.albumentations[0] (Blurr): unknown albumentations transform"),
    ([entry("Blur", p=0.1), entry("GaussNoise", sigma=3)],
     "data.albumentations[1] (GaussNoise): unknown argument(s) sigma"),
    ([entry("Blur", p=2.0)], "data.albumentations[0] (Blur): p"),
    ([entry("Rotate", limit="wide")], "data.albumentations[0] (Rotate): limit"),
    ([entry("RandomResizedCrop", size=[64, 64]), entry("Blur")], "data.albumentations[0] (RandomResizedCrop): "
                                                                "data.albumentations turns a 192x192 image into 64x64"),
    ([entry("MaskDropout")], "data.albumentations[0] (MaskDropout): fails on a 192x192 image"),
    ([entry("os.path.join")], "data.albumentations[0] (os.path.join): 'os.path.join' is not an albumentations"),
    ([{"__class_fullname__": "Blurx", "p": 0.1}], "data.albumentations[0] (Blurx): unknown albumentations"),
    ([{"__class_fullname__": "Blur", "p": 0.1, "radius": 3}], "data.albumentations[0] (Blur): Argument(s) 'radius'"),
    (["Blur"], "data.albumentations[0]: expected a mapping"),
    ([{"class_path": "Blur", "args": {}}], "data.albumentations[0]: expected keys class_path and init_args"),
])
def test_bad_entries_are_one_line_errors_naming_the_entry(entries: list, expected: str) -> None:
    with pytest.raises(DatasetError) as exc:
        AlbumentationsStage(entries, S)
    assert "\n" not in str(exc.value) and str(exc.value).startswith(expected), str(exc.value)


def test_from_dict_entries_and_dotted_class_paths_build_the_same_transforms() -> None:
    stage = AlbumentationsStage([{"__class_fullname__": "CoarseDropout", "num_holes_range": [2, 4], "p": 0.5},
                                 entry("albumentations.Perspective", scale=[0.05, 0.1], p=0.3),
                                 entry("A.ToGray", p=0.2)], S)
    names = [type(t).__name__ for t in stage.compose.transforms]
    assert names == ["CoarseDropout", "Perspective", "ToGray"] and not stage.pixel_only
    assert stage.compose.transforms[0].num_holes_range == (2, 4) and stage.compose.transforms[1].p == 0.3
    assert stage.to_dict()["transform"]["transforms"][2]["__class_fullname__"] == "ToGray"


def test_default_stage_is_pixel_level_and_keeps_labels() -> None:
    forced = [entry(e["class_path"], **{**e["init_args"], "p": 1.0}) for e in DEFAULT_ALBUMENTATIONS]
    for e in forced:
        stage = AlbumentationsStage([e], S)
        assert stage.pixel_only
        source = blob_item(np.random.default_rng(0))
        out = stage(Item(source.image.copy(), source.boxes.copy(), source.keypoints.copy(), source.classes,
                         source.crowd_boxes, {}), 0, FLIP)
        assert not np.array_equal(out.image, source.image), e["class_path"]
        assert np.array_equal(out.keypoints, source.keypoints) and np.array_equal(out.boxes, source.boxes)


def test_same_seed_same_result() -> None:
    stage = AlbumentationsStage([entry("Rotate", limit=30, p=0.5), entry("CoarseDropout", p=0.5)], S)
    source = blob_item(np.random.default_rng(0))

    def run(seed: int) -> Item:
        return stage(Item(source.image.copy(), source.boxes, source.keypoints, source.classes,
                          source.crowd_boxes, {}), seed, FLIP)
    a, b = run(5), run(5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.keypoints, b.keypoints)
    assert any(not np.array_equal(run(s).image, a.image) for s in range(6, 12))


# --------------------------------------------------------------------------- datamodule and CLI
def test_training_items_go_through_the_stage_and_validation_does_not(write_coco, people_coco) -> None:
    (train_ann, train_images), (val_ann, val_images) = (write_coco(people_coco([(120, 160)] * 3, seed=1), "train"),
                                                        write_coco(people_coco([(100, 140)] * 2, seed=2), "val"))
    paths = dict(train_ann=str(train_ann), train_images=str(train_images), val_ann=str(val_ann),
                 val_images=str(val_images), image_size=128, num_workers=0, mosaic=0.0, hsv_h=0.0, hsv_s=0.0,
                 hsv_v=0.0)

    def items(albumentations: list | None) -> tuple[Item, Item]:
        dm = PoseDataModule(format="coco", albumentations=albumentations, **paths)
        train = dm.train_dataset()
        train.seed(0)
        return train[0], dm.val_dataset()[0]
    gray = [entry("ToGray", p=1.0)]
    (train_plain, val_plain), (train_gray, val_gray) = items([]), items(gray)
    assert np.array_equal(val_plain.image, val_gray.image) and np.array_equal(val_plain.keypoints, val_gray.keypoints)
    assert not np.array_equal(train_plain.image, train_gray.image)
    assert (train_gray.image == train_gray.image[..., :1]).all()  # grey: the stage ran on the training item
    assert PoseDataModule(format="coco", **paths).albumentations.compose.transforms[0].__class__.__name__ == "Blur"


TINY = {"num_train": 8, "num_val": 4, "image_size": 160, "max_people": 2}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    ensure_synthetic_dataset(SyntheticConfig(root=str(root), **TINY))
    return root


def _config(tmp: Path, cache: Path, albumentations: list | None) -> Path:
    data = {"format": "synthetic", "synthetic": {"root": str(cache), **TINY}, "image_size": 128, "batch_size": 2,
            "num_workers": 0}
    if albumentations is not None:
        data["albumentations"] = albumentations
    cfg = {"seed_everything": 0,
           "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "limit_train_batches": 1,
                       "limit_val_batches": 1, "default_root_dir": str(tmp / "run"), "enable_progress_bar": False,
                       "num_sanity_val_steps": 0, "logger": {"class_path": "TensorBoardLogger",
                                                              "init_args": {"save_dir": str(tmp / "run")}}},
           "model": {"variant": "n", "width": 0.125, "kpt_head_depth": 1, "warmup_min_steps": 2},
           "data": data}
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_yaml_list_reaches_the_dataset_and_is_saved_with_the_run(tmp_path: Path, tiny_cache: Path, one_thread: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    user = [entry("Perspective", scale=[0.05, 0.1], p=0.5, fill=114),
            entry("CoarseDropout", num_holes_range=[1, 3], hole_height_range=[0.05, 0.1],
                  hole_width_range=[0.05, 0.1], fill=114, p=0.5)]
    seen: list[AlbumentationsStage] = []
    original = PoseDataModule.train_dataset

    def spy(self: PoseDataModule):  # noqa: ANN202 - records the dataset the Trainer gets
        ds = original(self)
        seen.append(ds.albumentations)
        return ds
    monkeypatch.setattr(PoseDataModule, "train_dataset", spy)
    main(["fit", "--config", str(_config(tmp_path, tiny_cache, user))])
    assert [type(t).__name__ for t in seen[0].compose.transforms] == ["Perspective", "CoarseDropout"]
    assert seen[0].compose.transforms[1].num_holes_range == (1, 3)
    saved = yaml.safe_load(next((tmp_path / "run").rglob("config.yaml")).read_text())
    assert saved["data"]["albumentations"] == user


def test_bad_entry_stops_the_cli_with_one_line(tmp_path: Path, tiny_cache: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(_config(tmp_path, tiny_cache, None)),
              "--data.albumentations", '[{"class_path": "Blur", "init_args": {"p": 0.1}}, {"class_path": "Blurr"}]'])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: data.albumentations[1] (Blurr): unknown albumentations transform 'Blurr' "
                       "(albumentations 2.0.8)")
    assert not (tmp_path / "run").exists()
