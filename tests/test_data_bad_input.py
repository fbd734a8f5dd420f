"""Bad input: a clear ``DatasetError`` naming the file and the offending id/field before training starts;
unreadable images at training time are logged, skipped and counted."""
from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import yaml

from yolopose.data.augment import AugmentConfig
from yolopose.data.coco import CocoKeypoints
from yolopose.data.datamodule import PoseDataModule
from yolopose.data.dataset import TrainDataset, ValDataset, collate
from yolopose.data.image_io import ImageReadError
from yolopose.data.sample import DatasetError
from yolopose.data.yolo_txt import YoloPoseTxt
from yolopose.evaluation import CocoEvaluator
from yolopose.module import PoseModule

NO_AUG = dict(mosaic=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, fliplr=0.0)


@pytest.fixture
def coco(people_coco) -> dict:
    return people_coco([(40, 50), (50, 40), (40, 40)], seed=1)


def _broken(write_coco, coco: dict, edit) -> Path:
    bad = copy.deepcopy(coco)
    edit(bad)
    return write_coco(bad)[0]


def _error(ann: Path) -> str:
    with pytest.raises(DatasetError) as e:
        CocoKeypoints(ann, ann.parent / "train")
    message = str(e.value)
    assert str(ann) in message, message
    return message


# --------------------------------------------------------------------------- COCO JSON
def test_malformed_json(write_coco, coco: dict) -> None:
    ann, _ = write_coco(coco)
    ann.write_text(ann.read_text()[:-40])
    assert "malformed JSON" in _error(ann)


def test_missing_annotation_file_and_image_folder(tmp_path: Path, write_coco, coco: dict) -> None:
    with pytest.raises(DatasetError, match="nope.json: annotation file not found"):
        CocoKeypoints(tmp_path / "nope.json", tmp_path)
    ann, _ = write_coco(coco)
    with pytest.raises(DatasetError, match="image folder .*missing"):
        CocoKeypoints(ann, tmp_path / "missing")


def test_keypoint_list_of_wrong_length(write_coco, coco: dict) -> None:
    def edit(c: dict) -> None:
        c["annotations"][1]["keypoints"] = c["annotations"][1]["keypoints"][:-3]
    message = _error(_broken(write_coco, coco, edit))
    aid = coco["annotations"][1]["id"]
    assert f"annotation id {aid}" in message and "'keypoints' has 12 values, expected 15" in message


def test_annotation_with_unknown_image_id(write_coco, coco: dict) -> None:
    def edit(c: dict) -> None:
        c["annotations"][-1]["image_id"] = 999
    message = _error(_broken(write_coco, coco, edit))
    assert f"annotation id {coco['annotations'][-1]['id']}" in message and "image_id 999" in message


@pytest.mark.parametrize("field", ["image_id", "category_id"])
def test_annotation_with_a_list_as_id(write_coco, coco: dict, field: str) -> None:
    def edit(c: dict) -> None:
        c["annotations"][0][field] = [1]
    message = _error(_broken(write_coco, coco, edit))
    assert f"annotation id {coco['annotations'][0]['id']}: {field} [1]" in message


@pytest.mark.parametrize("file_name", ["../outside.png", "sub/../../outside.png", "..\\outside.png", "/etc/passwd",
                                       "C:/x.png", ""])
def test_file_name_escaping_the_image_folder(write_coco, coco: dict, file_name: str) -> None:
    ann, _ = write_coco(coco)
    bad = json.loads(ann.read_text())
    bad["images"][2]["file_name"] = file_name
    ann.write_text(json.dumps(bad))
    message = _error(ann)
    assert f"image id {coco['images'][2]['id']}" in message and "file_name" in message and repr(file_name) in message


@pytest.mark.parametrize("field, value", [("keypoints", float("nan")), ("keypoints", float("inf")),
                                          ("bbox", float("-inf")), ("bbox", float("nan"))])
def test_non_finite_coordinates(write_coco, coco: dict, field: str, value: float) -> None:
    def edit(c: dict) -> None:
        c["annotations"][2][field][1] = value  # json writes NaN / Infinity, as some exporters do
    message = _error(_broken(write_coco, coco, edit))
    assert f"annotation id {coco['annotations'][2]['id']}" in message and f"'{field}'" in message
    assert "NaN or infinity" in message


def test_non_number_in_keypoints(write_coco, coco: dict) -> None:
    def edit(c: dict) -> None:
        c["annotations"][0]["keypoints"][4] = [1, 2]
    message = _error(_broken(write_coco, coco, edit))
    assert f"annotation id {coco['annotations'][0]['id']}" in message and "'keypoints'" in message


def test_empty_split(write_coco, coco: dict) -> None:
    def edit(c: dict) -> None:
        c["images"], c["annotations"] = [], []
    assert "split is empty" in _error(_broken(write_coco, coco, edit))


def test_duplicate_image_id_and_unknown_category(write_coco, coco: dict) -> None:
    def dup(c: dict) -> None:
        c["images"][1]["id"] = c["images"][0]["id"]
        c["annotations"] = []
    assert "image id 1 appears more than once" in _error(_broken(write_coco, coco, dup))

    def unknown(c: dict) -> None:
        c["annotations"][0]["category_id"] = 42
    message = _error(_broken(write_coco, coco, unknown))
    assert f"annotation id {coco['annotations'][0]['id']}" in message and "category_id 42" in message


def test_not_a_keypoint_file(write_coco, coco: dict) -> None:
    def edit(c: dict) -> None:
        c["categories"] = [{"id": 1, "name": "person"}]
    assert "no category has 'keypoints'" in _error(_broken(write_coco, coco, edit))


def test_datamodule_stops_before_training(write_coco, coco: dict) -> None:
    train_ann, train_images = write_coco(coco, "train")
    def edit(c: dict) -> None:
        c["annotations"][0]["keypoints"].append(1.0)
    bad = copy.deepcopy(coco)
    edit(bad)
    val_ann, val_images = write_coco(bad, "val")
    with pytest.raises(DatasetError, match=f"{val_ann}: annotation id {coco['annotations'][0]['id']}: 'keypoints'"):
        PoseDataModule(format="coco", train_ann=str(train_ann), train_images=str(train_images),
                       val_ann=str(val_ann), val_images=str(val_images), image_size=64, num_workers=0)


# --------------------------------------------------------------------------- YOLO txt
@pytest.fixture
def yolo(write_yolo, coco: dict) -> Path:
    return write_yolo({"train": coco, "val": coco})


def _yolo_error(yaml_path: Path, split: str = "train") -> str:
    with pytest.raises(DatasetError) as e:
        YoloPoseTxt(yaml_path, split)
    return str(e.value)


@pytest.mark.parametrize("line, match", [
    ("0 0.5 0.5 0.2 0.2 0.1 0.1 2", "line 2: 8 values, expected 20"),
    ("0 0.5 0.5 0.2 nan" + " 0.1 0.1 2" * 5, "line 2: NaN or infinity"),
    ("0 0.5 0.5 0.2 0.2" + " 0.1 inf 2" * 5, "line 2: NaN or infinity"),
    ("3 0.5 0.5 0.2 0.2" + " 0.1 0.1 2" * 5, "line 2: class 3 is not an integer in 0..0"),
    ("0 0.5 0.5 0.2 abc" + " 0.1 0.1 2" * 5, "line 2: not a number"),
])
def test_yolo_bad_label_line(yolo: Path, line: str, match: str) -> None:
    label = yolo.parent / "labels" / "train" / "000002.txt"
    label.write_text(label.read_text().splitlines()[0] + "\n" + line + "\n")
    message = _yolo_error(yolo)
    assert str(label) in message and match in message, message


@pytest.mark.parametrize("edit, match", [
    ({"flip_idx": [1, 2, 0, 3, 4]}, "flip_index is not an involution"),
    ({"flip_idx": [0, 2, 1]}, "flip_index has 3 entries, expected 5"),
    ({"kpt_shape": [5]}, "'kpt_shape' must be"),
    ({"names": []}, "'names' must be"),
    ({"val": "images/none"}, "neither a folder nor"),
    ({"path": "missing_root"}, "is not a folder"),
])
def test_yolo_bad_yaml(yolo: Path, edit: dict, match: str) -> None:
    cfg = yaml.safe_load(yolo.read_text())
    yolo.write_text(yaml.safe_dump({**cfg, **edit}))
    message = _yolo_error(yolo, "val")
    assert str(yolo) in message and match in message, message


def test_yolo_malformed_yaml_and_empty_split(yolo: Path) -> None:
    (yolo.parent / "images" / "empty").mkdir()
    cfg = yaml.safe_load(yolo.read_text())
    yolo.write_text(yaml.safe_dump({**cfg, "val": "images/empty"}))
    message = _yolo_error(yolo, "val")
    assert str(yolo) in message and "'val' split is empty" in message
    yolo.write_text("kpt_shape: [5, 3\nnames: x")
    assert "malformed YAML" in _yolo_error(yolo) and str(yolo) in _yolo_error(yolo)


# --------------------------------------------------------------------------- unreadable images while training
def test_missing_and_corrupt_images_are_logged_skipped_and_counted(write_coco, coco: dict,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    ann, images = write_coco(coco)
    (images / coco["images"][0]["file_name"]).unlink()
    (images / coco["images"][1]["file_name"]).write_bytes(b"not an image")
    ds = TrainDataset(CocoKeypoints(ann, images), 64, AugmentConfig(**NO_AUG))
    ds.seed(0)
    with caplog.at_level(logging.WARNING, logger="yolopose.data"):
        items = [ds[0], ds[1], ds[2]]
    assert [it.num_skipped >= 1 for it in items] == [True, True, False]
    assert all(it.meta["image_id"] == 3 for it in items)  # replaced by the only readable image
    assert items[0].image.shape == (64, 64, 3)
    logged = caplog.text
    assert "000001.png" in logged and "000002.png" in logged and "skipping unreadable training image" in logged
    batch = collate(items)
    assert batch["num_skipped"] == sum(it.num_skipped for it in items) >= 2
    assert batch["images"].shape == (3, 3, 64, 64)


def test_image_of_the_wrong_size_is_skipped(write_coco, coco: dict) -> None:
    bad = copy.deepcopy(coco)
    bad["images"][0]["height"] = 41  # the file is 40 high
    ann, images = write_coco(coco)
    ann.write_text(json.dumps(bad))
    ds = TrainDataset(CocoKeypoints(ann, images), 64, AugmentConfig(**NO_AUG))
    ds.seed(0)
    item = ds[0]
    assert item.num_skipped >= 1 and item.meta["image_id"] != 1


def test_training_gives_up_when_nothing_is_readable(write_coco, coco: dict) -> None:
    ann, images = write_coco(coco)
    for im in coco["images"]:
        (images / im["file_name"]).unlink()
    ds = TrainDataset(CocoKeypoints(ann, images), 64, AugmentConfig(**NO_AUG), max_retries=3)
    ds.seed(0)
    with pytest.raises(ImageReadError, match="4 images in a row could not be read"):
        ds[0]


def test_unreadable_validation_image_keeps_its_slot(write_coco, coco: dict) -> None:
    ann, images = write_coco(coco)
    (images / coco["images"][1]["file_name"]).unlink()
    ds = ValDataset(CocoKeypoints(ann, images), 64)
    item = ds[1]
    assert item.num_skipped == 1 and item.meta["image_id"] == 2 and item.meta["orig_size"] == (50, 40)
    assert len(item.boxes) == 0 and (item.image == 114).all()
    assert ds[0].num_skipped == 0 and len(ds[0].boxes) > 0
    assert collate([ds[0], ds[1]])["num_skipped"] == 1


def test_unreadable_yolo_validation_image_does_not_stop_evaluation(write_yolo, coco: dict,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """YOLO labels are normalised: the ground truth needs each image's decoded size."""
    yaml_path = write_yolo({"train": coco, "val": coco})
    (yaml_path.parent / "images" / "val" / "000002.png").write_bytes(b"junk")
    reader = YoloPoseTxt(yaml_path, "val")
    assert ValDataset(reader, 64)[1].num_skipped == 1
    with caplog.at_level(logging.ERROR, logger="yolopose.data"):
        gt = reader.coco_gt()
    assert "000002.png" in caplog.text
    assert [im["id"] for im in gt["images"]] == [1, 2, 3]
    assert len(gt["annotations"]) == len(coco["annotations"])
    records = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "keypoints": a["keypoints"],
                "score": 1.0} for a in gt["annotations"] if a["image_id"] != 2]
    metrics = CocoEvaluator(gt, np.array(reader.info.sigmas)).evaluate(records)
    assert 0 < metrics["kpt_AP"] < 1  # the unreadable image's persons count as missed


def test_a_corrupt_image_in_several_mosaics_is_one_skipped_file(write_coco, people_coco) -> None:
    coco = people_coco([(40, 50)] * 4, seed=2)
    ann, images = write_coco(coco)
    bad = images / coco["images"][2]["file_name"]
    bad.write_bytes(b"not an image")
    ds = TrainDataset(CocoKeypoints(ann, images), 64, AugmentConfig(**{**NO_AUG, "mosaic": 1.0}))
    ds.seed(0)
    items = [ds[i % 4] for i in range(12)]
    batch = collate(items)
    assert batch["num_skipped"] >= 2  # the file was drawn (and thrown away) several times...
    assert batch["skipped_files"] == [str(bad)]  # ...but it is one file
    assert {f for it in items for f in it.skipped_files} == {str(bad)}
    assert all(len(it.skipped_files) <= it.num_skipped for it in items)


class _Attempts(pl.Callback):
    """Sums the thrown-away attempts the batches report."""

    def __init__(self) -> None:
        self.attempts = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object, batch: dict,
                           batch_idx: int) -> None:
        self.attempts += batch["num_skipped"]


def test_train_skipped_images_counts_distinct_files_per_epoch(write_coco, people_coco, one_thread) -> None:
    coco = people_coco([(40, 50)] * 8, seed=3)
    ann, images = write_coco(coco)
    (images / coco["images"][5]["file_name"]).write_bytes(b"not an image")
    dm = PoseDataModule(format="coco", train_ann=str(ann), train_images=str(images), val_ann=str(ann),
                        val_images=str(images), image_size=64, batch_size=4, num_workers=0, mosaic_buffer=0,
                        **{**NO_AUG, "mosaic": 1.0})   # partners from the whole split: the file is drawn again
    pl.seed_everything(0)
    module = PoseModule(num_keypoints=dm.num_keypoints, sigmas=dm.sigmas, variant="n", width=0.125, kpt_head_depth=1,
                        warmup_min_steps=1)
    attempts = _Attempts()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[attempts])
    with warnings.catch_warnings():  # "modules in eval mode" (the EMA copy), "no validation": expected
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    assert attempts.attempts > 2  # the corrupt file was drawn into several mosaics over the two epochs
    assert float(trainer.callback_metrics["train/skipped_images"]) == 1.0  # the last epoch: one file
