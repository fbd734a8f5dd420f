"""Collate, ``PoseDataModule`` on tiny COCO and YOLO-pose datasets (dataset facts, batch shapes, validation
meta back to original pixels) and reproducible per-worker random streams."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from yolopose.data.datamodule import PoseDataModule
from yolopose.data.dataset import collate, worker_init_fn
from yolopose.data.sample import Item
from yolopose.geometry import UNIFORM_SIGMA
from yolopose.postprocess import undo_letterbox

K = 5
S = 64
TRAIN_SIZES = [(60, 80), (80, 60), (64, 64), (50, 90)]
VAL_SIZES = [(48, 64), (90, 50), (70, 70)]


# --------------------------------------------------------------------------- collate
def _item(rng: np.random.Generator, n: int, m: int, image_id: int, skipped: int = 0) -> Item:
    xy = rng.uniform(0, 20, (n, 2))
    return Item(image=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                boxes=np.concatenate([xy, xy + rng.uniform(1, 10, (n, 2))], 1).astype(np.float32),
                keypoints=rng.uniform(0, 30, (n, 2, 3)).astype(np.float32), classes=rng.integers(0, 3, n),
                crowd_boxes=rng.uniform(0, 30, (m, 4)).astype(np.float32),
                meta={"image_id": image_id, "orig_size": (5, 6), "scale": 1.5, "pad": (1, 2)}, num_skipped=skipped)


def test_collate_layout() -> None:
    rng = np.random.default_rng(0)
    items = [_item(rng, 2, 0, 10, 1), _item(rng, 0, 1, 11), _item(rng, 3, 2, 12, 2)]
    batch = collate(items)
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (3, 3, 8, 8)
    for b, it in enumerate(items):
        assert np.array_equal(batch["images"][b].numpy(), it.image.transpose(2, 0, 1))
    targets, ignore = batch["targets"], batch["ignore"]
    assert targets.dtype == torch.float32 and targets.shape == (5, 6 + 3 * 2)
    assert targets[:, 0].tolist() == [0, 0, 2, 2, 2]
    rows = [(b, j) for b, it in enumerate(items) for j in range(len(it.boxes))]
    for row, (b, j) in zip(targets.numpy(), rows):
        x1, y1, x2, y2 = items[b].boxes[j]
        assert row[1] == items[b].classes[j]
        assert np.allclose(row[2:6], [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], atol=1e-5)
        assert np.allclose(row[6:], items[b].keypoints[j].reshape(-1))
    assert ignore.shape == (3, 5) and ignore[:, 0].tolist() == [1, 2, 2]
    assert np.allclose(ignore[1:, 1:].numpy(), items[2].crowd_boxes)
    assert [m["image_id"] for m in batch["meta"]] == [10, 11, 12] and batch["num_skipped"] == 3


def test_collate_of_negatives_only() -> None:
    rng = np.random.default_rng(1)
    batch = collate([_item(rng, 0, 0, 1), _item(rng, 0, 0, 2)])
    assert batch["targets"].shape == (0, 12) and batch["ignore"].shape == (0, 5) and batch["num_skipped"] == 0


# --------------------------------------------------------------------------- PoseDataModule
@pytest.fixture
def cocos(people_coco) -> tuple[dict, dict]:
    train = people_coco(TRAIN_SIZES, seed=1)
    train["annotations"].append({"id": 99, "image_id": 2, "category_id": 1, "iscrowd": 1, "bbox": [5, 5, 20, 20],
                                 "area": 400.0, "num_keypoints": 0, "keypoints": [0] * 15})
    val = people_coco(VAL_SIZES, seed=2)
    val["images"].append({"id": 4, "file_name": "000004.png", "height": 40, "width": 40})  # a negative
    return train, val


def _coco_module(write_coco, cocos: tuple[dict, dict], **kwargs) -> PoseDataModule:
    (train_ann, train_images), (val_ann, val_images) = write_coco(cocos[0], "train"), write_coco(cocos[1], "val")
    return PoseDataModule(format="coco", train_ann=str(train_ann), train_images=str(train_images),
                          val_ann=str(val_ann), val_images=str(val_images), **{"image_size": S, "batch_size": 2,
                                                                                "num_workers": 0, **kwargs})


def _check_batch(batch: dict, size: int) -> None:
    b = len(batch["meta"])
    assert batch["images"].shape == (b, 3, size, size) and batch["images"].dtype == torch.uint8
    t = batch["targets"]
    assert t.dtype == torch.float32 and t.ndim == 2 and t.shape[1] == 6 + 3 * K
    assert ((t[:, 0] >= 0) & (t[:, 0] < b)).all() and (t[:, 0] == t[:, 0].round()).all() and (t[:, 1] == 0).all()
    cx, cy, w, h = t[:, 2:6].T
    assert (w > 0).all() and (h > 0).all() and (cx - w / 2 >= -1e-4).all() and (cy + h / 2 <= size + 1e-4).all()
    kp = t[:, 6:].reshape(-1, K, 3)
    assert set(kp[..., 2].unique().tolist()) <= {0.0, 1.0, 2.0}
    assert batch["ignore"].shape[1] == 5 and batch["num_skipped"] == 0
    for meta in batch["meta"]:
        assert {"image_id", "orig_size", "scale", "pad"} <= set(meta)


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_datamodule_exposes_dataset_facts_and_yields_batches(fmt: str, write_coco, write_yolo,
                                                             cocos: tuple[dict, dict]) -> None:
    if fmt == "coco":
        dm = _coco_module(write_coco, cocos)
    else:
        dm = PoseDataModule(format="yolo", yaml=str(write_yolo({"train": cocos[0], "val": cocos[1]})),
                            image_size=S, batch_size=2, num_workers=0)
    assert dm.num_keypoints == K and dm.num_classes == 1 and dm.category_ids == [1]
    assert dm.keypoint_names == ["nose", "left_eye", "right_eye", "left_wrist", "right_wrist"]
    assert dm.skeleton == [(0, 1), (0, 2), (1, 3), (2, 4)]
    assert dm.info.flip_index == [0, 2, 1, 4, 3] and dm.sigmas == [UNIFORM_SIGMA] * K
    torch.manual_seed(0)
    train = list(dm.train_dataloader())
    assert [len(b["meta"]) for b in train] == [2, 2]
    for batch in train:
        _check_batch(batch, S)
    assert sum(len(b["targets"]) for b in train) > 0
    val = list(dm.val_dataloader())
    assert [len(b["meta"]) for b in val] == [2, 2]
    for batch in val:
        _check_batch(batch, S)
    assert [m["image_id"] for b in val for m in b["meta"]] == [1, 2, 3, 4]  # every image, in order
    gt = dm.val_coco_gt()
    assert len(gt["images"]) == 4 and len(gt["annotations"]) == len(cocos[1]["annotations"])
    assert sum(len(b["targets"]) for b in val) == len(cocos[1]["annotations"])  # letterbox drops nothing


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_validation_meta_maps_targets_back_to_original_pixels(fmt: str, write_coco, write_yolo,
                                                              cocos: tuple[dict, dict]) -> None:
    if fmt == "coco":
        dm = _coco_module(write_coco, cocos, batch_size=3)
    else:
        dm = PoseDataModule(format="yolo", yaml=str(write_yolo({"train": cocos[0], "val": cocos[1]})),
                            image_size=S, batch_size=3, num_workers=0)
    truth: dict[int, list[dict]] = {}
    for a in cocos[1]["annotations"]:
        truth.setdefault(a["image_id"], []).append(a)
    sizes = {im["id"]: (im["height"], im["width"]) for im in cocos[1]["images"]}
    checked = 0
    for batch in dm.val_dataloader():
        for b, meta in enumerate(batch["meta"]):
            assert tuple(meta["orig_size"]) == sizes[meta["image_id"]]
            rows = batch["targets"][batch["targets"][:, 0] == b]
            cx, cy, w, h = rows[:, 2:6].T
            boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
            kp = rows[:, 6:].reshape(-1, K, 3)
            boxes, kp2 = undo_letterbox(boxes, kp, meta["scale"], meta["pad"], meta["orig_size"])
            anns = truth.get(meta["image_id"], [])
            assert len(boxes) == len(anns)
            for box, points, visible, a in zip(boxes, kp2, kp[..., 2], anns):
                x, y, bw, bh = a["bbox"]
                assert torch.allclose(box, torch.tensor([x, y, x + bw, y + bh], dtype=torch.float32), atol=2e-3)
                orig = torch.tensor(a["keypoints"], dtype=torch.float32).reshape(K, 3)
                assert torch.equal(visible, orig[:, 2])
                assert torch.allclose(points[visible > 0, :2], orig[orig[:, 2] > 0, :2], atol=2e-3)
                checked += 1
    assert checked == len(cocos[1]["annotations"])


def test_crowd_regions_reach_the_ignore_tensor(write_coco, cocos: tuple[dict, dict]) -> None:
    dm = _coco_module(write_coco, cocos, mosaic=0.0, scale=(1.0, 1.0), translate=0.0, fliplr=0.0)
    crowd = 0
    for batch in dm.train_dataloader():
        for row in batch["ignore"]:
            meta = batch["meta"][int(row[0])]
            assert meta["image_id"] == 2
            crowd += 1
    assert crowd == 1


def test_same_seed_gives_the_same_batches(write_coco, cocos: tuple[dict, dict]) -> None:
    dm = _coco_module(write_coco, cocos)

    def first_batch(seed: int) -> dict:
        torch.manual_seed(seed)
        return next(iter(dm.train_dataloader()))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["targets"], b["targets"])
    assert not torch.equal(a["images"], c["images"])


def test_dataloader_workers_get_distinct_reproducible_streams(tmp_path: Path, write_coco, people_coco) -> None:
    """Four identical images: two workers drawing the same random numbers would build identical items."""
    coco = people_coco([(60, 80)] * 4, seed=5)
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    coco["annotations"] = [{**a, "id": 10 * i + j, "image_id": i} for i in range(1, 5) for j, a in enumerate(first)]
    train_ann, train_images = write_coco(coco, "train")
    for name in ("000002.png", "000003.png", "000004.png"):
        shutil.copyfile(train_images / "000001.png", train_images / name)
    dm = PoseDataModule(format="coco", train_ann=str(train_ann), train_images=str(train_images),
                        val_ann=str(train_ann), val_images=str(train_images), image_size=S, batch_size=1,
                        num_workers=2)

    def epoch() -> list[dict]:
        loader = dm.train_dataloader()
        loader.dataset.seed(0)  # a stream seeded in the parent must not be shared by the forked workers
        loader.dataset[0]
        torch.manual_seed(0)
        batches = list(loader)
        del loader
        return batches

    one, two = epoch(), epoch()
    assert len(one) == 4
    for a, b in zip(one, two):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["targets"], b["targets"])
    assert not torch.equal(one[0]["images"], one[1]["images"])  # batch 0 from worker 0, batch 1 from worker 1
    worker_init_fn(0)  # outside a worker: nothing to do


# --------------------------------------------------------------------------- train_negatives
def _with_negatives(coco: dict) -> dict:
    """``coco`` plus 4 negatives: no annotation (ids 11, 12), only a crowd region (13), only a person without
    labelled keypoints (14)."""
    coco = {**coco, "images": list(coco["images"]), "annotations": list(coco["annotations"])}
    for i in (11, 12, 13, 14):
        coco["images"].append({"id": i, "file_name": f"{i:06d}.png", "height": 40, "width": 40})
    for i, crowd in ((13, 1), (14, 0)):
        coco["annotations"].append({"id": 1000 + i, "image_id": i, "category_id": 1, "iscrowd": crowd,
                                    "bbox": [2, 2, 20, 20], "area": 400.0, "num_keypoints": 0,
                                    "keypoints": [0] * 3 * K})
    return coco


@pytest.mark.parametrize("fraction, negatives", [(1.0, 4), (0.5, 2), (0.0, 0)])
def test_train_negatives_keeps_that_share_of_person_free_images(write_coco, cocos: tuple[dict, dict],
                                                               fraction: float, negatives: int) -> None:
    train = _with_negatives(cocos[0])
    dm = _coco_module(write_coco, (train, cocos[1]), train_negatives=fraction)
    ids = dm.train_split.table.image_ids.tolist()
    assert sorted(set(ids) - {11, 12, 13, 14}) == [1, 2, 3, 4]       # every labelled image stays
    assert len(ids) == 4 + negatives
    # labels travel with their images; the validation split is never filtered
    for i in range(len(dm.train_split)):
        sample = dm.train_split.load(i)
        want = [a for a in train["annotations"] if a["image_id"] == sample.image_id and not a["iscrowd"]]
        assert len(sample.boxes) == len(want)
    assert len(dm.val_split) == len(cocos[1]["images"])
    again = _coco_module(write_coco, (train, cocos[1]), train_negatives=fraction)
    assert again.train_split.table.image_ids.tolist() == ids        # the same images every run


def test_train_negatives_outside_zero_one_is_a_clear_error(write_coco, cocos: tuple[dict, dict]) -> None:
    from yolopose.data.sample import DatasetError

    with pytest.raises(DatasetError, match=r"data.train_negatives must be a fraction in \[0, 1\].*1.5"):
        _coco_module(write_coco, cocos, train_negatives=1.5)
