"""predict.py on a checkpoint written by a real Lightning Trainer and on its ONNX export: images, folders,
videos, zero detections, coordinates mapped back to the original image, and bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from yolopose.synthetic.config import SyntheticConfig
from yolopose.synthetic.scene import render_scene
from yolopose.export import ExportOptions, check_images, export_model
from yolopose.module import PoseModule
from yolopose.data.transforms import preprocess
from yolopose.inference import load_predictor
from yolopose.predict import main

ROOT = Path(__file__).resolve().parent.parent
K = 5
SKELETON = [(0, 1), (0, 2), (1, 3), (2, 4)]
SIZE = 128
W, H = 200, 150  # generated images: not square, so the letterbox pads


def _trained_module() -> PoseModule:
    """A tiny model with measured BatchNorm statistics (varied outputs, see test_export), then one real
    optimiser step through ``pl.Trainer`` so that the checkpoint is what ModelCheckpoint writes."""
    torch.manual_seed(0)
    module = PoseModule(variant="n", num_keypoints=K, width=0.125, depth=0.33, skeleton=SKELETON,
                        keypoint_names=[f"k{i}" for i in range(K)], category_ids=[1], lr=1e-6, warmup_bias_lr=0.0)
    for m in module.model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    module.model.train()
    with torch.no_grad():
        module.model(torch.from_numpy(check_images(SIZE, 6, seed=100)))
    module.ema.module.load_state_dict(module.model.state_dict())
    return module



pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # exports (and trains) a model


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("predict")
    module = _trained_module()
    images = (torch.from_numpy(check_images(SIZE, 2, seed=3)) * 255).to(torch.uint8)
    kpts = torch.tensor([[40.0, 40.0, 2.0] * K])
    targets = torch.cat([torch.tensor([[0.0, 0.0, 50.0, 60.0, 30.0, 60.0]]), kpts], 1)  # [b, cls, cxcywh, K*3]
    batch = {"images": images, "targets": targets, "meta": [{}, {}]}
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0)
    with warnings.catch_warnings():  # "no val_dataloader", "modules in eval mode" (the EMA copy): expected
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    assert trainer.global_step == 1
    ckpt = tmp / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    from yolopose.restore import load_deployable

    onnx_path = tmp / "model.onnx"
    model, info = load_deployable(ckpt)
    export_model(model, info, onnx_path, ExportOptions(imgsz=SIZE, conf=0.25, max_det=30), check=False)
    return {"ckpt": ckpt, "onnx": onnx_path}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(1)
    scene = tmp / "scene.jpg"
    cv2.imwrite(str(scene), render_scene(rng, SyntheticConfig(), W, H)[0])
    blank = tmp / "blank.png"
    cv2.imwrite(str(blank), np.full((H, W, 3), 90, np.uint8))
    video = None
    for suffix, fourcc in ((".mp4", "mp4v"), (".avi", "MJPG")):
        writer = cv2.VideoWriter(str(tmp / f"clip{suffix}"), cv2.VideoWriter_fourcc(*fourcc), 10, (W, H))
        if writer.isOpened():
            for _ in range(3):
                writer.write(render_scene(rng, SyntheticConfig(), W, H)[0])
            writer.release()
            video = tmp / f"clip{suffix}"
            break
    assert video is not None, "OpenCV can write neither mp4v nor MJPG here"
    return {"scene": scene, "blank": blank, "video": video}


def _run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in args] + ["--threads", "1"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _records(out: Path) -> list[dict]:
    return json.loads((out / "predictions.json").read_text())


# --------------------------------------------------------------------------- images
def test_checkpoint_and_onnx_give_the_same_records(weights: dict, media: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    outs = {}
    for kind in ("ckpt", "onnx"):
        out = tmp_path / kind
        rc, text, err = _run(capsys, "--weights", weights[kind], "--source", media["scene"], "--out", out,
                             "--imgsz", SIZE, "--conf", 0.01)  # the ONNX graph was exported at 0.25: patched
        assert rc == 0, err
        annotated = cv2.imread(str(out / "scene.jpg"))
        assert annotated is not None and annotated.shape == (H, W, 3)
        images = json.loads((out / "images.json").read_text())
        assert images["images"] == [{"id": 0, "file_name": "scene.jpg", "height": H, "width": W}]
        assert images["categories"][0]["skeleton"] == [[a + 1, b + 1] for a, b in SKELETON]
        outs[kind] = _records(out)
    a, b = outs["ckpt"], outs["onnx"]
    assert len(a) == len(b) > 0
    for ra, rb in zip(a, b):
        assert ra["category_id"] == rb["category_id"] == 1 and len(ra["keypoints"]) == 3 * K
        np.testing.assert_allclose(ra["bbox"], rb["bbox"], atol=0.02)
        np.testing.assert_allclose(ra["keypoints"], rb["keypoints"], atol=0.01)
        assert ra["score"] == pytest.approx(rb["score"], abs=1e-4)


def _predict_scene(weights: dict, media: dict, tmp_path: Path,
                   capsys: pytest.CaptureFixture) -> tuple[list, np.ndarray]:
    """``predict.py`` on the scene image at conf 0.01: its records and the scene as RGB."""
    rc, _, err = _run(capsys, "--weights", weights["onnx"], "--source", media["scene"], "--out", tmp_path,
                      "--conf", 0.01)
    assert rc == 0, err
    return _records(tmp_path), cv2.cvtColor(cv2.imread(str(media["scene"])), cv2.COLOR_BGR2RGB)


def test_records_are_in_original_image_pixels(weights: dict, media: dict, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    records, image = _predict_scene(weights, media, tmp_path, capsys)
    # the same detections computed by hand: input pixels -> (input - pad) / scale
    x, meta = preprocess(image, SIZE)
    assert meta["pad"][1] > 0 and meta["scale"] == pytest.approx(SIZE / W)
    det = load_predictor(weights["onnx"], conf=0.01).run(x[None]).image(0)
    assert len(records) == int(det.num_dets) > 0
    px, py = meta["pad"]
    for r, box, kp in zip(records, det.boxes.numpy(), det.keypoints.numpy()):
        k = np.asarray(r["keypoints"]).reshape(K, 3)
        np.testing.assert_allclose(k[:, 0], (kp[:, 0] - px) / meta["scale"], atol=2e-3)
        np.testing.assert_allclose(k[:, 1], (kp[:, 1] - py) / meta["scale"], atol=2e-3)
        x0, y0, bw, bh = r["bbox"]
        assert 0 <= x0 and 0 <= y0 and x0 + bw <= W + 0.01 and y0 + bh <= H + 0.01
        assert x0 == pytest.approx(max((box[0] - px) / meta["scale"], 0), abs=0.01)


def test_image_without_people_gives_zero_detections(weights: dict, media: dict, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    for kind in ("ckpt", "onnx"):
        out = tmp_path / kind
        rc, text, err = _run(capsys, "--weights", weights[kind], "--source", media["blank"], "--out", out,
                             "--imgsz", SIZE, "--conf", 0.999)
        assert rc == 0, err
        assert "0 detection(s)" in text and _records(out) == []
        assert cv2.imread(str(out / "blank.png")).shape == (H, W, 3)


def test_folder_skips_an_unreadable_image(weights: dict, media: dict, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "000007.jpg").write_bytes(media["scene"].read_bytes())
    (src / "000009.jpg").write_bytes(b"not a jpeg")
    rc, text, err = _run(capsys, "--weights", weights["onnx"], "--source", src, "--out", tmp_path / "out",
                         "--conf", 0.01)
    assert rc == 0 and "1 image(s)" in text
    assert "000009.jpg" in err and "1 unreadable image(s) skipped" in err
    records = _records(tmp_path / "out")
    assert records and {r["image_id"] for r in records} == {7}  # numeric file names are the COCO image ids
    assert (tmp_path / "out" / "000007.jpg").is_file()


# --------------------------------------------------------------------------- video
def test_video_writes_annotated_video_and_json(weights: dict, media: dict, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    rc, text, err = _run(capsys, "--weights", weights["onnx"], "--source", media["video"], "--out", tmp_path,
                         "--conf", 0.01)
    assert rc == 0, err
    assert "3 frame(s)" in text
    written = [p for p in tmp_path.iterdir() if p.stem == "clip"]
    assert len(written) == 1
    cap = cv2.VideoCapture(str(written[0]))
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (H, W, 3)
        frames += 1
    cap.release()
    assert frames == 3
    images = json.loads((tmp_path / "images.json").read_text())["images"]
    assert [i["id"] for i in images] == [0, 1, 2] and images[0]["file_name"] == "frame_000000"
    assert {r["image_id"] for r in _records(tmp_path)} <= {0, 1, 2} and _records(tmp_path)


@pytest.mark.parametrize("model", ["ckpt", "onnx"])
def test_tracked_video_gives_track_ids_in_the_json(weights: dict, media: dict, tmp_path: Path, model: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    rc, text, err = _run(capsys, "--weights", weights[model], "--source", media["video"], "--out", tmp_path,
                         "--conf", 0.01, "--track", "--smooth", "--trail", 5)
    assert rc == 0, err
    assert "3 frame(s)" in text and "tracking: " in text and "ms/frame" in text
    records = _records(tmp_path)
    assert records and all(set(r) == {"image_id", "category_id", "bbox", "keypoints", "score", "track_id"}
                           for r in records)
    assert all(isinstance(r["track_id"], int) and (r["track_id"] > 0 or r["track_id"] == -1) for r in records)
    assert {r["track_id"] for r in records if r["image_id"] == 0} - {-1}      # first frame: confirmed at once
    assert len([p for p in tmp_path.iterdir() if p.stem == "clip"]) == 1
    rc, _, err = _run(capsys, "--weights", weights[model], "--source", media["scene"], "--out", tmp_path / "x",
                      "--track")
    assert rc == 1 and "--track needs frames over time" in err


# --------------------------------------------------------------------------- bad input
def _error(capsys: pytest.CaptureFixture, *args: object) -> str:
    rc, _, err = _run(capsys, *args)
    err = err.strip()
    assert rc == 1 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_input_gives_one_line_errors(weights: dict, media: dict, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    assert "cannot decode image" in _error(capsys, "--weights", weights["onnx"], "--source", broken, "--out", out)
    assert "source not found" in _error(capsys, "--weights", weights["onnx"], "--source", tmp_path / "nope.jpg",
                                        "--out", out)
    bad_video = tmp_path / "bad.mp4"
    bad_video.write_bytes(b"\x00" * 64)
    assert str(bad_video) in _error(capsys, "--weights", weights["onnx"], "--source", bad_video, "--out", out)
    not_yolopose = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, not_yolopose)
    assert "not a yolopose checkpoint" in _error(capsys, "--weights", not_yolopose, "--source", media["scene"],
                                                 "--out", out)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x01\x02 not protobuf")
    assert "garbage.onnx" in _error(capsys, "--weights", garbage, "--source", media["scene"], "--out", out)
    err = _error(capsys, "--weights", weights["onnx"], "--source", media["scene"], "--out", out, "--imgsz", 256)
    assert f"fixed {SIZE}x{SIZE} input but --image_size is 256" in err
    err = _error(capsys, "--weights", weights["onnx"], "--source", media["scene"], "--out", out, "--max-det", 500)
    assert "at most 30 detections" in err
    assert not list(out.glob("*.json"))


def test_plain_onnx_without_metadata_is_rejected(tmp_path: Path, media: dict, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 3, 1).eval(), (torch.rand(1, 3, 8, 8),), str(path), dynamo=False)
    err = _error(capsys, "--weights", path, "--source", media["scene"], "--out", tmp_path / "out")
    assert "not a yolopose ONNX file" in err


def test_show_without_display_is_a_clear_error(weights: dict, media: dict, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    err = _error(capsys, "--weights", weights["onnx"], "--source", media["scene"], "--out", tmp_path, "--show")
    assert "--show needs a display" in err


def test_predict_script_fails_without_traceback(weights: dict, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    r = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--weights", str(weights["onnx"]), "--source",
                        str(broken), "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_a_big_folder_is_summarised_not_listed(weights: dict, media: dict, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(5):
        shutil.copy(media["blank"], src / f"b{i}.png")
    rc, text, _ = _run(capsys, "--weights", weights["onnx"], "--source", src, "--out", tmp_path / "out")
    assert rc == 0 and len(list((tmp_path / "out").glob("b*.png"))) == 5
    assert "5 image(s)" in text and "more)" in text and "b4.png" not in text  # plus the two JSON files


# --------------------------------------------------------------------------- defaults from the model, runtimes
def test_checkpoint_gives_its_training_size(people_coco, write_coco, media: dict, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    """A checkpoint written by a real fit with a PoseDataModule at 192 px: predict and the API use 192."""
    from yolopose.data.datamodule import PoseDataModule

    train_ann, train_images = write_coco(people_coco([(150, 200)] * 2), "train")
    dm = PoseDataModule(format="coco", train_ann=str(train_ann), train_images=str(train_images),
                        val_ann=str(train_ann), val_images=str(train_images), image_size=192, batch_size=2,
                        num_workers=0, mosaic=0.0)
    torch.manual_seed(0)
    module = PoseModule(variant="n", num_keypoints=K, width=0.125, depth=0.33, skeleton=SKELETON,
                        category_ids=[1], lr=1e-6, warmup_bias_lr=0.0)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    ckpt = tmp_path / "best.ckpt"
    trainer.save_checkpoint(ckpt)
    assert load_predictor(ckpt).imgsz == 192
    rc, text, err = _run(capsys, "--weights", ckpt, "--source", media["scene"], "--out", tmp_path / "out")
    assert rc == 0, err
    assert "image size 192" in text and "note:" not in text


def test_checkpoint_without_a_recorded_size_says_so(weights: dict, media: dict, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    rc, text, err = _run(capsys, "--ckpt", weights["ckpt"], "--source", media["blank"], "--out", tmp_path)
    assert rc == 0, err
    assert "image size 640" in text and "does not record the size it was trained at" in text


def test_api_returns_original_pixels(weights: dict, media: dict, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    """``load_predictor(path)(images)``: the detections predict.py writes, in the image's own pixels."""
    records, image = _predict_scene(weights, media, tmp_path, capsys)
    det = load_predictor(weights["onnx"], conf=0.01)([image, np.zeros((40, 60, 3), np.uint8)])
    assert det.boxes.shape[0] == 2 and int(det.num_dets[0]) == len(records) > 0
    for r, box, kp in zip(records, det.boxes[0].numpy(), det.keypoints[0].numpy()):
        np.testing.assert_allclose(r["bbox"], [box[0], box[1], box[2] - box[0], box[3] - box[1]], atol=0.01)
        np.testing.assert_allclose(np.asarray(r["keypoints"]).reshape(K, 3)[:, :2], kp[:, :2], atol=0.01)


def test_predict_runs_openvino(weights: dict, media: dict, tmp_path: Path) -> None:
    """``--runtime openvino`` (f32 inference precision by default) writes the same outputs; its detections are
    compared with onnxruntime's in test_export (on a model whose fp32 outputs are well conditioned)."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'yolopose[openvino]')")
    # predict.py in its own process: OpenVINO's CPU plugin loaded into the pytest process made a later
    # test of the suite crash it (see test_export's OpenVINO test).
    r = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--weights", str(weights["onnx"]), "--runtime",
                        "openvino", "--source", str(media["scene"]), "--out", str(tmp_path), "--conf", "0.01",
                        "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "openvino f32" in r.stdout and _records(tmp_path) and (tmp_path / "scene.jpg").is_file()


@pytest.mark.parametrize("package", ["onnx", "onnxruntime"])
def test_onnx_without_its_runtime_is_a_clear_error(package: str, weights: dict, media: dict, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # not installed (a plain `pip install yolopose`)
    err = _error(capsys, "--weights", weights["onnx"], "--source", media["scene"], "--out", tmp_path)
    assert "pip install 'yolopose[export]'" in err and package in err


def test_runtime_mismatch_is_a_clear_error(weights: dict, media: dict, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    err = _error(capsys, "--weights", weights["ckpt"], "--runtime", "openvino", "--source", media["scene"],
                 "--out", tmp_path)
    assert "runs an exported .onnx file" in err
    err = _error(capsys, "--weights", weights["onnx"], "--runtime", "torch", "--source", media["scene"],
                 "--out", tmp_path)
    assert "is an ONNX file" in err
