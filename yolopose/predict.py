"""Inference on images, folders, videos and webcams with a checkpoint or an exported ONNX file.

    python predict.py --weights CKPT|model.onnx --source IMAGE|FOLDER|VIDEO|WEBCAM_INDEX --out DIR [--show]

Every frame is letterboxed exactly as in validation (``data.transforms.letterbox``), run through the
network + ``geometry.decode`` + ``postprocess.select_detections`` (in PyTorch for a checkpoint, inside the
graph for an ONNX file) and mapped back to original pixels with ``evaluation.detections_to_records`` /
``postprocess.undo_letterbox``. Written to ``--out``: annotated images (same file names) or an annotated
video, ``predictions.json`` (COCO results: ``image_id, category_id, bbox, keypoints, score``) and
``images.json`` (the ``images`` and ``categories`` of a COCO file for those ids).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch

from yolopose.data.image_io import IMAGE_SUFFIXES, ImageReadError, read_image
from yolopose.data.sample import Sample
from yolopose.data.transforms import letterbox
from yolopose.evaluation import detections_to_records
from yolopose.export import DeployModel, ExportError, ModelInfo, outputs_to_detections, read_metadata
from yolopose.postprocess import Detections, select_detections, undo_letterbox
from yolopose.viz import draw_poses

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
DEFAULTS = {"imgsz": 640, "conf": 0.25, "iou": 0.65, "max_det": 100, "top_k": 1000}


class PredictError(ValueError):
    """Bad predict input (weights, source, sizes, display); the message says what and why."""


def preprocess(image: np.ndarray, size: int, image_id: int = 0) -> tuple[np.ndarray, dict]:
    """``(H, W, 3) uint8 RGB`` -> network input ``(3, S, S) float32`` in [0, 1] and the letterbox ``meta``.

    ``meta`` holds ``image_id``, ``orig_size (h, w)``, ``scale`` and ``pad`` (``input = original * scale + pad``).
    """
    h, w = image.shape[:2]
    sample = Sample(np.ascontiguousarray(image), np.zeros((0, 4), np.float32), np.zeros((0, 1, 3), np.float32),
                    np.zeros(0, np.int64), np.zeros((0, 4), np.float32), image_id, (h, w))
    item = letterbox(sample, size)
    return item.image.transpose(2, 0, 1).astype(np.float32) / 255.0, item.meta


# --------------------------------------------------------------------------- predictors
class Predictor:
    """``predictor(batch (B, 3, S, S) float32) -> Detections`` in input pixels; ``info``, ``imgsz``."""

    info: ModelInfo
    imgsz: int
    description: str

    def __call__(self, batch: np.ndarray) -> Detections:
        raise NotImplementedError


class TorchPredictor(Predictor):
    """A checkpoint run in PyTorch through the same ``DeployModel`` that export traces."""

    def __init__(self, ckpt: str | Path, imgsz: int | None, conf: float | None, iou: float | None,
                 max_det: int | None, top_k: int | None = None) -> None:
        from yolopose.checkpoint import load_module

        module = load_module(ckpt)
        self.info = ModelInfo.from_module(module)
        self.imgsz = imgsz or DEFAULTS["imgsz"]
        if self.imgsz % self.info.stride:
            raise PredictError(f"--imgsz {self.imgsz} is not a multiple of the model's largest stride "
                               f"{self.info.stride}")
        pick = lambda v, key: DEFAULTS[key] if v is None else v  # noqa: E731
        self.model = DeployModel(module.inference_model.float().eval(), self.info.num_classes, pick(conf, "conf"),
                                 pick(iou, "iou"), pick(max_det, "max_det"), pick(top_k, "top_k")).eval()
        self.description = (f"{ckpt} (PyTorch, {self.info.variant or '?'}/{self.info.act}, imgsz {self.imgsz}, "
                            f"conf {self.model.conf:g}, iou {self.model.iou:g})")

    def __call__(self, batch: np.ndarray) -> Detections:
        with torch.inference_mode():
            return outputs_to_detections(self.model(torch.from_numpy(batch)))


class OnnxPredictor(Predictor):
    """An exported ONNX file run in onnxruntime; thresholds other than the exported ones are patched in."""

    def __init__(self, path: str | Path, imgsz: int | None, conf: float | None, iou: float | None,
                 max_det: int | None, top_k: int | None = None, threads: int | None = None) -> None:
        import onnx
        import onnxruntime as ort

        from yolopose.export import INPUT_NAME, nms_thresholds, set_nms_thresholds

        path = Path(path)
        if not path.is_file():
            raise PredictError(f"weights not found: {path}")
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - any protobuf failure means "not an ONNX file"
            raise PredictError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
        meta = read_metadata(proto) if proto.metadata_props else None
        if meta is None:
            raise PredictError(f"{path}: not a yolopose ONNX file (no yolopose metadata; export it with export.py)")
        self.info = ModelInfo(meta["num_keypoints"], meta["num_classes"], meta["keypoint_names"], meta["skeleton"],
                              meta["category_ids"], meta["sigmas"], meta.get("variant", ""), meta.get("act", ""),
                              meta["stride"])
        shape = proto.graph.input[0].type.tensor_type.shape
        dims = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
        fixed = dims[2] if dims[2] is not None and dims[2] == dims[3] else None
        if fixed is not None and imgsz is not None and imgsz != fixed:
            raise PredictError(f"{path} has a fixed {fixed}x{fixed} input but --imgsz is {imgsz}: drop --imgsz "
                               f"(images are letterboxed to the model's size) or re-export with --imgsz {imgsz}")
        self.imgsz = fixed or imgsz or meta["imgsz"]
        self.batch = dims[0]  # None when symbolic
        self.nms = meta["nms"]
        self.max_det = max_det
        if self.nms:
            graph_conf, graph_iou = nms_thresholds(proto)
            if max_det is not None and max_det > meta["max_det"]:
                raise PredictError(f"{path} returns at most {meta['max_det']} detections per image (fixed at export); "
                                   f"--max-det {max_det} needs a re-export with --max-det {max_det}")
            if (conf is not None and conf != graph_conf) or (iou is not None and iou != graph_iou):
                proto = set_nms_thresholds(proto, conf, iou)
            self.conf, self.iou = (graph_conf if conf is None else conf), (graph_iou if iou is None else iou)
        else:
            self.conf, self.iou = DEFAULTS["conf"] if conf is None else conf, DEFAULTS["iou"] if iou is None else iou
            self.top_k = DEFAULTS["top_k"] if top_k is None else top_k
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.input_name = INPUT_NAME
        self.description = (f"{path} (onnxruntime, {'NMS in graph' if self.nms else 'raw graph'}, imgsz "
                            f"{self.imgsz}, conf {self.conf:g}, iou {self.iou:g})")

    def __call__(self, batch: np.ndarray) -> Detections:
        n = len(batch)
        if self.batch is not None and self.batch != n:  # a static batch: pad with empty images
            if n > self.batch:
                raise PredictError(f"the ONNX file takes batches of {self.batch}, got {n}")
            batch = np.concatenate([batch, np.zeros((self.batch - n, *batch.shape[1:]), batch.dtype)])
        out = self.session.run(None, {self.input_name: batch})
        if self.nms:
            det = outputs_to_detections(out)
        else:
            det = select_detections(torch.from_numpy(out[0]), self.info.num_classes, self.conf, self.iou,
                                    self.max_det or DEFAULTS["max_det"], self.top_k)
        det = Detections(det.num_dets[:n], det.boxes[:n], det.scores[:n], det.labels[:n], det.keypoints[:n])
        if self.nms and self.max_det is not None:  # fewer than exported: keep the best (rows are by score)
            m = self.max_det
            det = Detections(det.num_dets.clamp(max=m), det.boxes[:, :m], det.scores[:, :m], det.labels[:, :m],
                             det.keypoints[:, :m])
        return det


def load_predictor(weights: str | Path, imgsz: int | None = None, conf: float | None = None,
                   iou: float | None = None, max_det: int | None = None, threads: int | None = None) -> Predictor:
    """A ``.onnx`` file -> ``OnnxPredictor``; anything else is read as a yolopose checkpoint."""
    if str(weights).lower().endswith(".onnx"):
        return OnnxPredictor(weights, imgsz, conf, iou, max_det, threads=threads)
    return TorchPredictor(weights, imgsz, conf, iou, max_det)


# --------------------------------------------------------------------------- sources and sinks
@dataclass
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    image_id: int
    name: str  # file name (images) or "frame_000012" (videos)


class Source:
    """Frames of an image, a folder of images, a video file or a webcam (an integer index)."""

    def __init__(self, source: str, out: Path) -> None:
        self.spec = source
        self.skipped: list[str] = []
        self.fps = 25.0
        if source.isdigit():
            self.kind, self.index = "webcam", int(source)
            self.name = f"webcam{source}"
            return
        path = Path(source)
        if not path.exists():
            raise PredictError(f"source not found: {path}")
        self.path = path
        if path.is_dir():
            self.kind = "folder"
            self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not self.files:
                raise PredictError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            stems = [p.stem for p in self.files]
            self.numeric_ids = all(s.isdigit() for s in stems) and len(set(map(int, stems))) == len(stems)
            if path.resolve() == out.resolve():
                raise PredictError(f"--out {out} is the source folder: the annotated images would overwrite the inputs")
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            self.kind = "video"
        else:
            self.kind = "image"
            self.files, self.numeric_ids = [path], path.stem.isdigit()
            if (out / path.name).resolve() == path.resolve():
                raise PredictError(f"--out {out} holds the source image: the annotated image would overwrite it")
        self.name = path.stem

    def frames(self) -> Iterator[Frame]:
        if self.kind in ("image", "folder"):
            yield from self._images()
        else:
            yield from self._video()

    def _images(self) -> Iterator[Frame]:
        for i, f in enumerate(self.files):
            try:
                image = read_image(f)
            except ImageReadError as exc:
                if self.kind == "image":
                    raise
                print(f"warning: skipped: {exc}", file=sys.stderr)
                self.skipped.append(str(f))
                continue
            yield Frame(image, int(f.stem) if self.numeric_ids else i, f.name)
        if self.kind == "folder" and len(self.skipped) == len(self.files):
            raise PredictError(f"{self.path}: none of the {len(self.files)} images could be read")

    def _video(self) -> Iterator[Frame]:
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our own message says what failed
        try:
            cap = cv2.VideoCapture(self.index) if self.kind == "webcam" else cv2.VideoCapture(str(self.path))
        finally:
            cv2.utils.logging.setLogLevel(level)
        what = f"webcam {self.index}" if self.kind == "webcam" else str(self.path)
        if not cap.isOpened():
            raise PredictError(f"cannot open {what}" + (" (no such camera?)" if self.kind == "webcam" else
                                                         " (not a video, or a codec OpenCV cannot decode)"))
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else 25.0
        i = 0
        try:
            while True:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), i, f"frame_{i:06d}")
                i += 1
        finally:
            cap.release()
        if i == 0:
            raise PredictError(f"{what}: no frame could be decoded")


class VideoSink:
    """Annotated frames -> ``<out>/<name>.mp4`` (mp4v), or ``.avi`` (MJPG) where mp4v is unavailable."""

    def __init__(self, out: Path, name: str, fps: float) -> None:
        self.out, self.name, self.fps = out, name, fps
        self.writer: cv2.VideoWriter | None = None
        self.path: Path | None = None

    def write(self, bgr: np.ndarray) -> None:
        if self.writer is None:
            h, w = bgr.shape[:2]
            for suffix, fourcc in ((".mp4", "mp4v"), (".avi", "MJPG")):
                path = self.out / f"{self.name}{suffix}"
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), self.fps, (w, h))
                if writer.isOpened():
                    self.writer, self.path = writer, path
                    break
                writer.release()
            if self.writer is None:
                raise PredictError(f"OpenCV cannot write a video here (neither mp4v nor MJPG) into {self.out}")
        self.writer.write(bgr)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def check_display() -> None:
    """Raise ``PredictError`` unless an OpenCV window can be opened."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise PredictError("--show needs a display, and none is available (DISPLAY is not set); drop --show: the "
                           "annotated files are written to --out")
    try:
        cv2.namedWindow("yolopose", cv2.WINDOW_NORMAL)
    except cv2.error:
        raise PredictError("--show: this OpenCV build has no GUI support (opencv-python-headless); install "
                           "opencv-python for windows, or drop --show") from None


# --------------------------------------------------------------------------- the run
@dataclass
class Summary:
    frames: int
    detections: int
    outputs: list[Path]
    skipped: list[str]


def annotate(frame: Frame, det: Detections, meta: dict, info: ModelInfo, kpt_threshold: float) -> np.ndarray:
    """The frame as BGR with the valid detections of ``det`` (one image) drawn in original pixels."""
    bgr = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
    if int(det.num_dets) == 0:
        return bgr
    boxes, kpts = undo_letterbox(det.boxes.float(), det.keypoints.float(), meta["scale"], meta["pad"],
                                 meta["orig_size"])
    return draw_poses(bgr, boxes.numpy(), kpts.numpy(), [tuple(p) for p in info.skeleton], kpt_threshold,
                      det.scores.numpy())


def predict(predictor: Predictor, source: Source, out: Path, kpt_threshold: float = 0.5, show: bool = False,
            max_frames: int = 0) -> Summary:
    """Run ``predictor`` over ``source``, write the annotated media and the JSON files into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    images: list[dict] = []
    outputs: list[Path] = []
    sink = VideoSink(out, source.name, source.fps) if source.kind in ("video", "webcam") else None
    info = predictor.info
    n_det = 0
    try:
        for frame in source.frames():
            if sink is not None:
                sink.fps = source.fps
            x, meta = preprocess(frame.image, predictor.imgsz, frame.image_id)
            det = predictor(x[None]).image(0)
            records.extend(detections_to_records(det, meta, info.category_ids))
            n_det += int(det.num_dets)
            h, w = frame.image.shape[:2]
            images.append({"id": frame.image_id, "file_name": frame.name, "height": h, "width": w})
            vis = annotate(frame, det, meta, info, kpt_threshold)
            if sink is not None:
                sink.write(vis)
            else:
                path = out / frame.name
                if not cv2.imwrite(str(path), vis):
                    path = path.with_suffix(".jpg")
                    cv2.imwrite(str(path), vis)
                outputs.append(path)
            if show:
                cv2.imshow("yolopose", vis)
                if cv2.waitKey(0 if sink is None else 1) & 0xFF in (ord("q"), 27):
                    break
            if max_frames and len(images) >= max_frames:
                break
    except KeyboardInterrupt:
        print("interrupted: writing what was done", file=sys.stderr)
    finally:
        if sink is not None:
            sink.close()
            if sink.path is not None:
                outputs.append(sink.path)
        if show:
            cv2.destroyAllWindows()
    (out / "predictions.json").write_text(json.dumps(records))
    skeleton_1based = [[a + 1, b + 1] for a, b in info.skeleton]
    cats = [{"id": cid, "name": f"class{i}", "keypoints": info.keypoint_names, "skeleton": skeleton_1based}
            for i, cid in enumerate(info.category_ids)]
    (out / "images.json").write_text(json.dumps({"images": images, "categories": cats}, indent=1))
    outputs += [out / "predictions.json", out / "images.json"]
    return Summary(len(images), n_det, outputs, source.skipped)


# --------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="predict.py", description="Multi-person pose inference: draws boxes and "
                                "skeletons, writes annotated images/video and COCO-results JSON.")
    p.add_argument("--weights", required=True, help="yolopose checkpoint (.ckpt) or exported .onnx file")
    p.add_argument("--source", required=True, help="image, folder of images, video file, or webcam index (0)")
    p.add_argument("--out", default="runs/predict", help="output folder")
    p.add_argument("--imgsz", type=int, default=None,
                   help="input size (default: the ONNX file's, or 640 for a checkpoint)")
    p.add_argument("--conf", type=float, default=None, help="confidence threshold (default: exported / 0.25)")
    p.add_argument("--iou", type=float, default=None, help="NMS IoU threshold (default: exported / 0.65)")
    p.add_argument("--max-det", type=int, default=None, help="detections per image (default: exported / 100)")
    p.add_argument("--kpt-thr", type=float, default=0.5, help="draw keypoints with confidence >= this")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: all)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime / torch threads")
    p.add_argument("--show", action="store_true", help="also show each result in a window (needs a display)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 on success, a one-line ``error:`` on stderr and 1 on bad input."""
    from yolopose.checkpoint import CheckpointError

    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        if a.show:
            check_display()
        out = Path(a.out)
        source = Source(a.source, out)
        predictor = load_predictor(a.weights, a.imgsz, a.conf, a.iou, a.max_det, a.threads)
        print(f"model: {predictor.description}")
        s = predict(predictor, source, out, a.kpt_thr, a.show, a.max_frames)
    except (PredictError, CheckpointError, ExportError, ImageReadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    shown = [str(p) for p in s.outputs[:3]] + ([f"... ({len(s.outputs) - 3} more)"] if len(s.outputs) > 3 else [])
    media = ", ".join(shown)  # a folder of thousands of images must not print thousands of paths
    print(f"{s.frames} {'frame' if source.kind in ('video', 'webcam') else 'image'}(s), {s.detections} "
          f"detection(s) -> {media}")
    if s.skipped:
        print(f"warning: {len(s.skipped)} unreadable image(s) skipped", file=sys.stderr)
    return 0
