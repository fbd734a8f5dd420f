"""``python predict.py``: pose inference on images, folders, videos and webcams (sources, drawing, outputs).

    python predict.py --weights CKPT|model.onnx --source IMAGE|FOLDER|VIDEO|WEBCAM_INDEX --out DIR
                      [--runtime torch|onnxruntime|openvino] [--image_size S] [--show]
                      [--track [--smooth] [--trail N] [--max-lost N]]

The model runs through the inference API (``yolopose.inference.load_predictor``): every frame is
letterboxed as in validation, detected, and mapped back to original pixels with
``evaluation.detections_to_records`` / ``postprocess.undo_letterbox``. Written to ``--out``: annotated images
(same file names) or an annotated video, ``predictions.json`` (COCO results: ``image_id, category_id, bbox,
keypoints, score``) and ``images.json`` (the ``images`` and ``categories`` of a COCO file for those ids).

``--track`` (video, webcam, or a folder of frames in name order) follows people across frames
(``yolopose.track.PoseTracker``): every record gains ``track_id`` (-1 while a person's track is not confirmed),
people are drawn in their track's colour with its id (and a trail with ``--trail``), and ``--smooth`` reports
One-Euro-smoothed keypoints. The detector then runs at the tracker's low threshold (0.1 unless ``--conf``), and
the outputs keep the detections at the report threshold (0.25) plus the weaker ones that continue a track.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch

from yolopose.data.image_io import IMAGE_SUFFIXES, ImageReadError, read_image
from yolopose.data.transforms import preprocess
from yolopose.evaluation import detections_to_records
from yolopose.export.contract import DEPLOY_DEFAULTS, ExportError, ModelInfo
from yolopose.inference import OPENVINO_PRECISIONS, RUNTIMES, PredictError, Predictor, load_predictor
from yolopose.postprocess import Detections, undo_letterbox
from yolopose.viz import draw_poses, draw_tracks

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
__all__ = ["PredictError", "Source", "VideoSink", "annotate", "load_predictor", "main", "predict", "preprocess"]


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


@dataclass
class Tracking:
    """``predict``'s tracking settings: the tracker and the score a detection needs to be reported on its own."""
    tracker: object            # yolopose.track.PoseTracker (imported only when tracking)
    report_conf: float
    seconds: float = 0.0


def tracked_frame(frame: Frame, det: Detections, meta: dict, info: ModelInfo, tracking: Tracking,
                  kpt_threshold: float) -> tuple[list[dict], np.ndarray]:
    """One frame through the tracker: its COCO records with ``track_id`` (the reported detections only) and the
    annotated BGR frame (colour and id per track, trails)."""
    records = detections_to_records(det, meta, info.category_ids)
    n = len(records)
    boxes = np.array([[r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]]
                      for r in records], np.float64).reshape(n, 4)
    kpts = np.array([r["keypoints"] for r in records], np.float64).reshape(n, len(info.keypoint_names), 3)
    scores = np.array([r["score"] for r in records], np.float64)
    t0 = time.perf_counter()
    ids = tracking.tracker.update(boxes, scores, kpts)
    tracking.seconds += time.perf_counter() - t0
    shown = (scores >= tracking.report_conf) | (ids > 0)
    out = []
    for i in np.flatnonzero(shown):
        rec = dict(records[i], track_id=int(ids[i]))
        rec["keypoints"] = np.round(tracking.tracker.smoothed[i].ravel(), 3).tolist()
        out.append(rec)
    trails = {t.id: t.trail for t in tracking.tracker.tracks if t.id and t.lost == 0}
    bgr = draw_tracks(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR), boxes[shown], tracking.tracker.smoothed[shown],
                      ids[shown], [tuple(p) for p in info.skeleton], kpt_threshold, trails)
    return out, bgr


def predict(predictor: Predictor, source: Source, out: Path, kpt_threshold: float = 0.5, show: bool = False,
            max_frames: int = 0, tracking: Tracking | None = None) -> Summary:
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
            det = predictor.run(x[None]).image(0)
            if tracking is None:
                frame_records = detections_to_records(det, meta, info.category_ids)
                vis = annotate(frame, det, meta, info, kpt_threshold)
            else:
                tracking.tracker.fps = source.fps   # a video's rate is known once it is open
                frame_records, vis = tracked_frame(frame, det, meta, info, tracking, kpt_threshold)
            records.extend(frame_records)
            n_det += len(frame_records)
            h, w = frame.image.shape[:2]
            images.append({"id": frame.image_id, "file_name": frame.name, "height": h, "width": w})
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
    p.add_argument("--weights", "--ckpt", dest="weights", required=True,
                   help="yolopose checkpoint (.ckpt) or exported .onnx file (--ckpt: the same)")
    p.add_argument("--source", required=True, help="image, folder of images, video file, or webcam index (0)")
    p.add_argument("--out", default="runs/predict", help="output folder")
    p.add_argument("--image_size", "--imgsz", dest="image_size", type=int, default=None,
                   help="input size (default: the ONNX file's, or the size the checkpoint was trained at; "
                   "--imgsz: the same)")
    p.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="torch for a checkpoint; onnxruntime (default) or openvino for an .onnx file")
    p.add_argument("--precision", choices=OPENVINO_PRECISIONS, default="f32",
                   help="OpenVINO's INFERENCE_PRECISION_HINT (default f32; its own CPU default may be bf16)")
    p.add_argument("--conf", type=float, default=None, help="confidence threshold (default: exported / 0.25)")
    p.add_argument("--iou", type=float, default=None, help="NMS IoU threshold (default: exported / 0.65)")
    p.add_argument("--max-det", type=int, default=None, help="detections per image (default: exported / 100)")
    p.add_argument("--kpt-thr", type=float, default=0.5, help="draw keypoints with confidence >= this")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: all)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime / torch threads")
    p.add_argument("--show", action="store_true", help="also show each result in a window (needs a display)")
    p.add_argument("--track", action="store_true",
                   help="follow people across frames (video, webcam, folder of frames): ids, colours, JSON track_id")
    p.add_argument("--smooth", action="store_true", help="with --track: One-Euro smoothing of the keypoints")
    p.add_argument("--trail", type=int, default=0, help="with --track: draw each person's last N box centres")
    p.add_argument("--max-lost", type=int, default=30, help="with --track: frames a lost person's track is kept")
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
        track_cfg = tracker_config(a, source) if a.track else None
        conf = a.conf if a.conf is not None or track_cfg is None else track_cfg.low   # the tracker's weak stage
        predictor = load_predictor(a.weights, a.image_size, conf, a.iou, a.max_det, a.threads, a.runtime,
                                   a.precision)
        print(f"model: {predictor.description}")
        if predictor.size_note:
            print(f"note: {predictor.size_note}")
        tracking = None
        if track_cfg is not None:
            from yolopose.track import PoseTracker

            report = a.conf if a.conf is not None else DEPLOY_DEFAULTS.conf
            tracking = Tracking(PoseTracker(predictor.info.sigmas, track_cfg, source.fps), report_conf=report)
        s = predict(predictor, source, out, a.kpt_thr, a.show, a.max_frames, tracking)
    except (PredictError, CheckpointError, ExportError, ImageReadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    shown = [str(p) for p in s.outputs[:3]] + ([f"... ({len(s.outputs) - 3} more)"] if len(s.outputs) > 3 else [])
    media = ", ".join(shown)  # a folder of thousands of images must not print thousands of paths
    print(f"{s.frames} {'frame' if source.kind in ('video', 'webcam') else 'image'}(s), {s.detections} "
          f"detection(s) -> {media}")
    if tracking is not None and s.frames:
        ids = {t.id for t in tracking.tracker.tracks if t.id} | set(range(1, tracking.tracker.next_id))
        print(f"tracking: {len(ids)} track(s), {1000 * tracking.seconds / s.frames:.2f} ms/frame")
    if s.skipped:
        print(f"warning: {len(s.skipped)} unreadable image(s) skipped", file=sys.stderr)
    return 0


def tracker_config(a: argparse.Namespace, source: Source) -> object:
    """The ``TrackerConfig`` of ``--track`` (checked before the model loads)."""
    if source.kind == "image":
        raise PredictError("--track needs frames over time: a video, a webcam or a folder of frames")
    if a.max_lost < 0 or a.trail < 0:
        raise PredictError(f"--max-lost and --trail must be >= 0, got {a.max_lost}, {a.trail}")
    from yolopose.track import TrackerConfig

    return TrackerConfig(smooth=a.smooth, trail=a.trail, max_lost=a.max_lost)
