"""Lower-precision exports: ``--int8`` keeps the output contract and metadata and says what it cost, a broken
calibration is refused, ``--half`` writes a valid FP16 file, NNCF stays optional.

The validation set is the FP32 model's own three best detections on a few scenes (kpt AP ~1.0 for FP32 by
construction), so a lost detection or a moved keypoint shows up as an AP drop. This untrained 0.125-width model loses
~0.5 of it even when calibrated on those scenes (its keypoints sit on near-tied raw values), against ~0.98 when
calibrated on black images: the tests set ``--max-ap-drop 0.8`` between the two.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from yolopose.export import OUTPUT_NAMES, check_images, read_metadata
from yolopose.export.cli import main
from yolopose.inference import load_predictor

from test_export import NAMES, SKELETON, SIZE, calibrated_module, save_checkpoint

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
pytest.importorskip("nncf")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("lowp")
    ckpt = save_checkpoint(calibrated_module(), tmp / "model.ckpt")
    images = tmp / "images"
    images.mkdir()
    scenes = (check_images(SIZE, 8, seed=7).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
    for i, rgb in enumerate(scenes):
        cv2.imwrite(str(images / f"{i + 1:06d}.png"), rgb[..., ::-1])
    det = load_predictor(ckpt, conf=0.001)(list(scenes))   # the 3 best of each scene become its ground truth
    annotations = []
    for i in range(len(scenes)):
        for j in range(min(int(det.num_dets[i]), 3)):
            x1, y1, x2, y2 = det.boxes[i, j].tolist()
            kp = det.keypoints[i, j].clone()
            kp[:, 2] = 2
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "num_keypoints": len(NAMES), "keypoints": kp.flatten().tolist()})
    assert len(annotations) == 24
    ann = tmp / "val.json"
    ann.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": f"{i + 1:06d}.png", "height": SIZE, "width": SIZE}
                   for i in range(len(scenes))],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "keypoints": NAMES,
                        "skeleton": [[a + 1, b + 1] for a, b in SKELETON]}]}))
    black = tmp / "black"
    black.mkdir()
    for i in range(4):
        cv2.imwrite(str(black / f"{i}.png"), np.zeros((SIZE, SIZE, 3), np.uint8))
    return {"ckpt": ckpt, "images": images, "ann": ann, "black": black, "tmp": tmp}


def _export(setup: dict, out: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    rc = main(["--weights", str(setup["ckpt"]), "--out", str(out), "--max-det", "20", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_int8_keeps_the_contract_and_says_what_it_cost(setup: dict, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "int8.onnx"
    rc, text, err = _export(setup, out, capsys, "--int8", "--calib", str(setup["images"]), "--val-ann",
                            str(setup["ann"]), "--val-images", str(setup["images"]), "--max-ap-drop", "0.8")
    assert rc == 0, err
    assert "int8 vs fp32 on 8 validation images: kpt AP 0.987 -> " in text and "latency" in text
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "NonMaxSuppression"} <= ops
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    meta = read_metadata(proto)
    assert meta["precision"] == "int8" and json.loads(meta["calibration"])["images"] == 8
    cost = json.loads(meta["precision_cost"])
    assert cost["kpt_ap_fp32"] == pytest.approx(1.0, abs=0.02) and cost["kpt_ap"] >= cost["kpt_ap_fp32"] - 0.8
    det = load_predictor(out)(cv2.imread(str(next(setup["images"].iterdir())))[..., ::-1].copy())
    assert det.boxes.shape == (1, 20, 4) and det.keypoints.shape == (1, 20, len(NAMES), 3)


def test_a_broken_calibration_is_refused(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Calibrated on black images, every activation range is far too narrow: the AP check must refuse the file."""
    out = tmp_path / "broken.onnx"
    rc, _, err = _export(setup, out, capsys, "--int8", "--calib", str(setup["black"]), "--val-ann",
                         str(setup["ann"]), "--val-images", str(setup["images"]), "--max-ap-drop", "0.8")
    assert rc == 1 and "more than --max-ap-drop 0.8: not kept" in err and "--calib" in err
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_half_writes_a_valid_fp16_file(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "half.onnx"
    rc, text, err = _export(setup, out, capsys, "--half", "--val-ann", str(setup["ann"]), "--val-images",
                            str(setup["images"]))
    assert rc == 0, err
    assert "fp16 vs fp32" in text
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    types = {i.data_type for i in proto.graph.initializer if i.name in conv_weights}
    assert types == {onnx.TensorProto.FLOAT16}
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert read_metadata(proto)["precision"] == "fp16"
    assert load_predictor(out)(np.zeros((SIZE, SIZE, 3), np.uint8)).boxes.dtype.is_floating_point


def test_without_a_validation_set_it_says_it_could_not_check(setup: dict, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    rc, text, err = _export(setup, tmp_path / "q.onnx", capsys, "--int8", "--calib", str(setup["images"]))
    assert rc == 0, err
    assert "what it costs in AP was NOT checked" in text


def test_int8_without_nncf_is_a_one_line_error(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "nncf", None)
    rc, _, err = _export(setup, tmp_path / "q.onnx", capsys, "--int8", "--calib", str(setup["images"]))
    assert rc == 1 and "pip install 'yolopose[int8]'" in err and "\n" not in err.strip()
