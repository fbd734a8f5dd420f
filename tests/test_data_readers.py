"""COCO keypoints and YOLO-pose txt readers: dataset facts, messy real-world fields, image decoding, and
the two formats giving the same samples for the same data."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from yolopose.data.coco import CocoKeypoints
from yolopose.data.coco_person import COCO_KEYPOINT_NAMES, coco_person_category
from yolopose.data.image_io import ImageReadError, read_image
from yolopose.data.sample import DatasetError, flip_index_from_names, validate_flip_index
from yolopose.data.yolo_txt import YoloPoseTxt
from yolopose.geometry import UNIFORM_SIGMA

# Published COCO person sigmas and the flip_idx Ultralytics ships for COCO (independent oracles).
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10
COCO_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
NAMES = ["nose", "left_eye", "right_eye", "left_wrist", "right_wrist"]


# --------------------------------------------------------------------------- flip pairs
@pytest.mark.parametrize("names, expected", [
    (list(COCO_KEYPOINT_NAMES), COCO_FLIP),
    (["l_knee", "neck", "r_knee"], [2, 1, 0]),
    (["Left Eye", "right eye", "Nose"], [1, 0, 2]),
    (["eye_l", "eye_r", "mouth"], [1, 0, 2]),
    (["LeftHand", "RightHand", "Head"], [1, 0, 2]),
    (["left-front-paw", "right-front-paw", "left.ear", "right.ear"], [1, 0, 3, 2]),
    (["R_Ankle", "L_Ankle"], [1, 0]),
    (["left_paw", "tail", "upper_lip", "lower_lip"], [0, 1, 2, 3]),  # no partner: keeps itself
    (["left_eye", "Left Eye", "right_eye"], [0, 1, 2]),  # ambiguous: nothing paired
    (["leftover", "rightmost", "rear", "leg"], [0, 1, 2, 3]),  # sides only as whole tokens or prefixes
])
def test_flip_index_from_names(names: list[str], expected: list[int]) -> None:
    flip = flip_index_from_names(names)
    assert flip == expected
    assert validate_flip_index(flip, len(names), "x") == expected


@pytest.mark.parametrize("flip, match", [
    ([1, 2, 0], "not an involution"),
    ([0, 0, 2], "not an involution"),
    ([1, 0], "2 entries, expected 3"),
    ([0, 1, 3], "out of range"),
    ([0, -1, 2], "out of range"),
    (["a", 1, 2], "list of integers"),
])
def test_validate_flip_index_rejects_bad_lists(flip: list, match: str) -> None:
    with pytest.raises(DatasetError, match=match) as e:
        validate_flip_index(flip, 3, "my/data.yaml")
    assert "my/data.yaml" in str(e.value)


def test_validate_flip_index_accepts_involutions() -> None:
    assert validate_flip_index([0, 1, 2], 3, "x") == [0, 1, 2]
    assert validate_flip_index(np.array([2, 1, 0]), 3, "x") == [2, 1, 0]


# --------------------------------------------------------------------------- COCO: dataset facts
def _category(names: list[str], skeleton: list, name: str = "person", cid: int = 1) -> dict:
    return {"id": cid, "name": name, "supercategory": name, "keypoints": names, "skeleton": skeleton}


def _one_image_coco(categories: list[dict], annotations: list[dict] | None = None) -> dict:
    return {"images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50}],
            "annotations": annotations or [], "categories": categories}


def test_coco_dataset_facts_come_from_categories(write_coco) -> None:
    coco = _one_image_coco([_category(NAMES, [[1, 2], [1, 3], [2, 4], [3, 5], [1, 9]])])
    coco["categories"].append({"id": 7, "name": "car"})  # no keypoints: not a class
    reader = CocoKeypoints(*write_coco(coco))
    info = reader.info
    assert info.num_keypoints == 5 and info.keypoint_names == NAMES
    assert info.skeleton == [(0, 1), (0, 2), (1, 3), (2, 4)]  # 0-based; the link to keypoint 9 dropped
    assert info.flip_index == [0, 2, 1, 4, 3]
    assert info.sigmas == [UNIFORM_SIGMA] * 5  # not the 17-keypoint person: uniform
    assert info.class_names == ["person"] and info.category_ids == [1] and info.num_classes == 1


def test_coco_person_with_17_keypoints_gets_coco_sigmas_and_flip(write_coco) -> None:
    reader = CocoKeypoints(*write_coco(_one_image_coco([coco_person_category()])))
    assert np.allclose(reader.info.sigmas, COCO_SIGMAS)
    assert reader.info.flip_index == COCO_FLIP
    assert len(reader.info.skeleton) == 19 and (15, 13) in reader.info.skeleton


def test_coco_17_keypoint_animal_gets_uniform_sigmas(write_coco) -> None:
    cat = _category(list(COCO_KEYPOINT_NAMES), [], name="dog")
    reader = CocoKeypoints(*write_coco(_one_image_coco([cat])))
    assert reader.info.sigmas == [UNIFORM_SIGMA] * 17


def test_coco_config_overrides_flip_and_sigmas_and_validates_them(write_coco) -> None:
    ann, images = write_coco(_one_image_coco([_category(NAMES, [])]))
    reader = CocoKeypoints(ann, images, flip_index=[0, 1, 2, 3, 4], sigmas=[0.1, 0.2, 0.3, 0.4, 0.5])
    assert reader.info.flip_index == [0, 1, 2, 3, 4]
    assert reader.info.sigmas == [0.1, 0.2, 0.3, 0.4, 0.5]
    with pytest.raises(DatasetError, match="not an involution") as e:
        CocoKeypoints(ann, images, flip_index=[1, 2, 0, 3, 4])
    assert str(ann) in str(e.value)
    with pytest.raises(DatasetError, match="sigmas has 2 values, expected 5"):
        CocoKeypoints(ann, images, sigmas=[0.1, 0.2])
    with pytest.raises(DatasetError, match=r"sigmas\[1\]"):
        CocoKeypoints(ann, images, sigmas=[0.1, -0.2, 0.1, 0.1, 0.1])


# --------------------------------------------------------------------------- COCO: messy real files
def _kp(*points: tuple[float, float, float]) -> list[float]:
    return [c for p in points for c in p]


def test_coco_messy_annotations(write_coco) -> None:
    """Crowd regions, keypoint-less persons, missing area/num_keypoints/keypoints, v = 0 with xy, negatives."""
    anns = [
        {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [2, 4, 20, 30], "area": 500.0,
         "num_keypoints": 3, "keypoints": _kp((5, 6, 2), (8, 9, 1), (10, 11, 2), (0, 0, 0), (0, 0, 0))},
        {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [30, 2, 15, 10], "area": 150.0,
         "num_keypoints": 0, "keypoints": [0] * 15, "segmentation": {"counts": "abc", "size": [40, 50]}},
        {"id": 13, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [25, 15, 10, 20], "area": 200.0,
         "num_keypoints": 0, "keypoints": [0] * 15},
        {"id": 14, "image_id": 1, "category_id": 1, "bbox": [5, 20, 30, 10],  # no area, num_keypoints, iscrowd
         "keypoints": _kp((7, 22, 2), (30, 25, 0), (9, 23, 1), (0, 0, 0), (20, 28, 2))},
        {"id": 15, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 5, 5]},  # no keypoints at all
    ]
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50},
                       {"id": 2, "file_name": "sub/b.png", "height": 30, "width": 20}],  # no annotations
            "annotations": anns, "categories": [_category(NAMES, [])]}
    reader = CocoKeypoints(*write_coco(coco))
    assert len(reader) == 2
    s = reader.load(0)
    assert s.image.shape == (40, 50, 3) and s.image.dtype == np.uint8 and s.orig_size == (40, 50)
    # crowd is an ignore region only, never a positive
    assert np.allclose(s.crowd_boxes, [[30, 2, 45, 12]])
    assert np.allclose(s.boxes, [[2, 4, 22, 34], [25, 15, 35, 35], [5, 20, 35, 30], [1, 1, 6, 6]])
    assert s.keypoints.shape == (4, 5, 3) and s.keypoints.dtype == np.float32 and s.classes.tolist() == [0] * 4
    # keypoint-less persons stay box-only positives with every keypoint masked
    assert (s.keypoints[1] == 0).all() and (s.keypoints[3] == 0).all()
    # v = 0 with non-zero xy becomes (0, 0, 0); labelled points keep xy and v
    assert s.keypoints[2].tolist() == [[7, 22, 2], [0, 0, 0], [9, 23, 1], [0, 0, 0], [20, 28, 2]]
    assert s.keypoints[0, :3].tolist() == [[5, 6, 2], [8, 9, 1], [10, 11, 2]]
    # the image without annotations is a negative
    neg = reader.load(1)
    assert neg.image.shape == (30, 20, 3) and len(neg.boxes) == 0 and len(neg.crowd_boxes) == 0
    assert neg.keypoints.shape == (0, 5, 3)
    # ground truth: missing fields derived, every annotation kept (crowd with iscrowd = 1)
    gt = {a["id"]: a for a in reader.coco_gt()["annotations"]}
    assert sorted(gt) == [11, 12, 13, 14, 15]
    assert gt[14]["area"] == pytest.approx(300.0) and gt[14]["num_keypoints"] == 3 and gt[14]["iscrowd"] == 0
    assert gt[14]["keypoints"][3:6] == [0, 0, 0]
    assert gt[11]["area"] == pytest.approx(500.0) and gt[12]["iscrowd"] == 1 and gt[13]["num_keypoints"] == 0
    assert gt[15]["num_keypoints"] == 0 and gt[15]["keypoints"] == [0] * 15
    assert [im["id"] for im in reader.coco_gt()["images"]] == [1, 2]


def test_coco_box_without_area_is_rebuilt_from_keypoints(write_coco) -> None:
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [3, 3, 0, 0],
             "keypoints": _kp((5, 6, 2), (15, 26, 2), (0, 0, 0), (0, 0, 0), (0, 0, 0))},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [3, 3, 0, 0], "keypoints": [0] * 15}]  # dropped
    reader = CocoKeypoints(*write_coco(_one_image_coco([_category(NAMES, [])], anns)))
    s = reader.load(0)
    assert np.allclose(s.boxes, [[5, 6, 15, 26]])
    assert [a["id"] for a in reader.coco_gt()["annotations"]] == [1]


# --------------------------------------------------------------------------- image decoding
def _exif_jpeg(rgb: np.ndarray, orientation: int) -> bytes:
    """JPEG bytes of ``rgb`` with an EXIF APP1 segment holding only the orientation tag."""
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) \
        + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpg[:2].tobytes() + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpg[2:].tobytes()


RED, BLUE = (230, 20, 20), (20, 20, 230)


def _is(pixels: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.abs(pixels.reshape(-1, 3).astype(int).mean(0) - colour).max() < 25)


def test_exif_rotated_jpeg_follows_the_annotated_size(tmp_path: Path) -> None:
    raw = np.zeros((40, 64, 3), np.uint8)  # stored grid: 40 rows x 64 columns, left half red, right blue
    raw[:, :32], raw[:, 32:] = RED, BLUE
    path = tmp_path / "rot.jpg"
    path.write_bytes(_exif_jpeg(raw, orientation=6))  # 6: display rotated 90 degrees clockwise
    upright = read_image(path)
    assert upright.shape == (64, 40, 3)  # no declared size: seen upright, as viewers show it
    assert _is(upright[4:28], RED) and _is(upright[36:60], BLUE)  # clockwise: the left half is on top
    assert read_image(path, (64, 40)).shape == (64, 40, 3)
    stored = read_image(path, (40, 64))  # annotated on the stored grid: the raw grid is used
    assert stored.shape == (40, 64, 3) and _is(stored[:, 4:28], RED) and _is(stored[:, 36:60], BLUE)
    with pytest.raises(ImageReadError, match="rot.jpg"):
        read_image(path, (50, 50))


def test_grey_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    grey = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    out = read_image(tmp_path / "grey.png")
    assert out.shape == (12, 16, 3) and (out == grey[..., None]).all()
    bgra = np.random.default_rng(0).integers(0, 256, (12, 16, 4), dtype=np.uint8)
    bgra[:6, :, 3] = 0  # transparent half: the colour is still used, alpha dropped
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (12, 16, 3) and (out == bgra[..., 2::-1]).all()
    bgr = read_image(tmp_path / "rgba.png", bgr=True)
    assert (bgr == bgra[..., :3]).all()


def test_coco_reader_loads_grey_rgba_and_exif_images(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "grey.png"), np.full((30, 20), 77, np.uint8))
    cv2.imwrite(str(images / "rgba.png"), np.full((30, 20, 4), (10, 20, 30, 0), np.uint8))
    raw = np.zeros((20, 30, 3), np.uint8)
    raw[:, :15], raw[:, 15:] = RED, BLUE
    (images / "rot.jpg").write_bytes(_exif_jpeg(raw, orientation=6))  # upright 30 x 20
    coco = {"images": [{"id": 1, "file_name": "grey.png", "height": 30, "width": 20},
                       {"id": 2, "file_name": "rgba.png", "height": 30, "width": 20},
                       {"id": 3, "file_name": "rot.jpg", "height": 30, "width": 20}],
            "annotations": [], "categories": [_category(NAMES, [])]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    reader = CocoKeypoints(tmp_path / "ann.json", images)
    assert (reader.load(0).image == 77).all()
    assert (reader.load(1).image == (30, 20, 10)).all()
    rot = reader.load(2).image
    assert rot.shape == (30, 20, 3) and _is(rot[2:12], RED) and _is(rot[18:28], BLUE)


# --------------------------------------------------------------------------- YOLO txt
def _with_extras(coco: dict) -> dict:
    """Add a keypoint-less person and a negative image (both formats can express them)."""
    coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                                "bbox": [3.0, 4.0, 20.0, 25.0], "area": 500.0, "num_keypoints": 0,
                                "keypoints": [0] * 15})
    coco["images"].append({"id": len(coco["images"]) + 1, "file_name": f"{len(coco['images']) + 1:06d}.png",
                           "height": 36, "width": 52})
    return coco


def test_yolo_and_coco_readers_give_the_same_samples(people_coco, write_coco, write_yolo) -> None:
    coco = _with_extras(people_coco([(60, 80), (80, 60), (50, 50)], seed=3))
    reader_c = CocoKeypoints(*write_coco(coco, "val"))
    reader_y = YoloPoseTxt(write_yolo({"train": coco, "val": coco}), "val")
    assert reader_y.info == reader_c.info
    assert len(reader_y) == len(reader_c) == 4
    by_id = {reader_y.image_id(i): i for i in range(len(reader_y))}
    assert sorted(by_id) == [1, 2, 3, 4]
    for i in range(len(reader_c)):
        a, b = reader_c.load(i), reader_y.load(by_id[reader_c.image_id(i)])
        assert a.image_id == b.image_id and a.orig_size == b.orig_size
        assert np.array_equal(a.image, b.image)
        assert a.boxes.shape == b.boxes.shape and np.allclose(a.boxes, b.boxes, atol=1e-3)
        assert np.allclose(a.keypoints, b.keypoints, atol=1e-3) and np.array_equal(a.classes, b.classes)
        assert len(b.crowd_boxes) == 0
    assert sum(len(reader_c.load(i).boxes) for i in range(4)) == len(coco["annotations"])
    gt_c, gt_y = reader_c.coco_gt(), reader_y.coco_gt()
    assert [(im["id"], im["height"], im["width"]) for im in gt_c["images"]] == \
        sorted((im["id"], im["height"], im["width"]) for im in gt_y["images"])
    assert gt_c["categories"] == gt_y["categories"]
    for ac, ay in zip(sorted(gt_c["annotations"], key=lambda a: (a["image_id"], a["bbox"])),
                      sorted(gt_y["annotations"], key=lambda a: (a["image_id"], a["bbox"]))):
        assert ac["image_id"] == ay["image_id"] and ac["num_keypoints"] == ay["num_keypoints"]
        assert np.allclose(ac["bbox"], ay["bbox"], atol=1e-3) and ac["area"] == pytest.approx(ay["area"], rel=1e-4)
        assert np.allclose(ac["keypoints"], ay["keypoints"], atol=1e-3)


def _yolo_root(tmp_path: Path, cfg: dict, labels: dict[str, str], size: tuple[int, int] = (40, 50)) -> Path:
    for name, text in labels.items():
        cv2.imwrite(str(_mk(tmp_path / "images" / "train" / f"{name}.png")), np.zeros((*size, 3), np.uint8))
        if text is not None:
            _mk(tmp_path / "labels" / "train" / f"{name}.txt").write_text(text)
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/train", **cfg}))
    return path


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_yolo_17_keypoint_person_defaults_to_coco_topology(tmp_path: Path) -> None:
    reader = YoloPoseTxt(_yolo_root(tmp_path, {"kpt_shape": [17, 3], "names": ["person"]}, {"img_a": None}))
    info = reader.info
    assert info.keypoint_names == list(COCO_KEYPOINT_NAMES) and info.flip_index == COCO_FLIP
    assert np.allclose(info.sigmas, COCO_SIGMAS) and len(info.skeleton) == 19
    s = reader.load(0)
    assert s.keypoints.shape == (0, 17, 3) and s.image_id == 1  # no label file: a negative; non-digit stem: 1..N


def test_yolo_flip_idx_and_two_column_keypoints(tmp_path: Path) -> None:
    cfg = {"kpt_shape": [3, 2], "names": {0: "hand", 1: "paw"}, "flip_idx": [1, 0, 2]}
    line = "1 0.5 0.5 0.4 0.5 0.3 0.4 0 0 0.6 0.45\n"  # second point at (0, 0): unlabelled
    reader = YoloPoseTxt(_yolo_root(tmp_path, cfg, {"17": line}))
    assert reader.info.flip_index == [1, 0, 2] and reader.info.class_names == ["hand", "paw"]
    assert reader.info.keypoint_names == ["kpt_0", "kpt_1", "kpt_2"] and reader.info.skeleton == []
    s = reader.load(0)
    assert s.image_id == 17 and s.classes.tolist() == [1]
    assert np.allclose(s.boxes, [[15, 10, 35, 30]])
    assert np.allclose(s.keypoints, [[[15, 16, 2], [0, 0, 0], [30, 18, 2]]])
    assert YoloPoseTxt(tmp_path / "data.yaml", flip_index=[0, 1, 2]).info.flip_index == [0, 1, 2]


def test_mean_pose_is_the_average_offset_in_box_units_over_labelled_points() -> None:
    from yolopose.data.table import build_table

    boxes = np.array([[0, 0, 10, 20], [100, 100, 120, 140], [0, 0, 50, 50]], float)
    kpts = np.zeros((3, 2, 3), np.float32)
    kpts[0] = [[5, 0, 2], [10, 20, 1]]        # offsets (0, -0.5) and (0.5, 0.5)
    kpts[1] = [[110, 110, 2], [0, 0, 0]]      # (0, -0.25); second point unlabelled
    kpts[2] = [[0, 0, 2], [0, 0, 2]]          # a crowd region: ignored
    table = build_table(["a.jpg"], [1], [(200, 200)], np.zeros(3, np.int64), boxes, kpts, np.zeros(3, np.int64),
                        np.array([False, False, True]), np.arange(1, 4), np.ones(3), np.ones(3, np.int64))
    assert np.allclose(table.mean_pose(), [[0.0, -0.375], [0.5, 0.5]])
    # unit-free: the same labels normalised by the image size give the same pose
    norm = build_table(["a.jpg"], [1], [(0, 0)], np.zeros(3, np.int64), boxes / 200,
                       np.concatenate([kpts[..., :2] / 200, kpts[..., 2:]], -1), np.zeros(3, np.int64),
                       np.array([False, False, True]), np.arange(1, 4), np.ones(3), np.ones(3, np.int64))
    assert np.allclose(norm.mean_pose(), table.mean_pose(), atol=1e-6)
