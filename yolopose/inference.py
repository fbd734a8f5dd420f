"""The inference API: ``load_predictor(path)(images) -> Detections`` for a checkpoint or an exported ONNX file.

    from yolopose.inference import load_predictor
    predictor = load_predictor("best.ckpt")               # or "model.onnx", runtime="openvino"
    det = predictor([rgb_image])                           # Detections in original image pixels

Every image is letterboxed as in validation (``data.transforms.preprocess``) and run through network +
``geometry.decode`` + ``postprocess.select_detections``: in PyTorch (``DeployModel``) for a checkpoint,
inside the graph for an ONNX file (onnxruntime, or OpenVINO on the CPU with f32 inference precision unless
told otherwise). ``predictor.run(batch)`` takes network input and returns detections in input pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from yolopose.data.transforms import preprocess
from yolopose.export.contract import DEPLOY_DEFAULTS, INPUT_NAME, ExportError, ModelInfo, read_metadata
from yolopose.export.onnx_graph import nms_thresholds, set_nms_thresholds
from yolopose.export.wrapper import DeployModel, outputs_to_detections
from yolopose.postprocess import Detections, select_detections, undo_letterbox

RUNTIMES = ("torch", "onnxruntime", "openvino")
OPENVINO_PRECISIONS = ("f32", "bf16", "f16")
FALLBACK_IMAGE_SIZE = 640  # a checkpoint that does not record the size it was trained at


class PredictError(ValueError):
    """Bad inference input (weights, sizes, runtime); the message says what and why."""


class Predictor:
    """``predictor(images) -> Detections`` in original pixels; ``predictor.run(batch) -> Detections`` in input
    pixels. Attributes: ``info`` (``ModelInfo``), ``imgsz`` (input size S), ``description``."""

    info: ModelInfo
    imgsz: int
    description: str
    size_note: str = ""  # why the input size is a fallback, if it is
    max_batch: int | None = None  # images per run (a static ONNX batch); None: any

    def run(self, batch: np.ndarray) -> Detections:
        """``(B, 3, S, S) float32`` in [0, 1] -> ``Detections`` in input pixels."""
        raise NotImplementedError

    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> Detections:
        """One ``(H, W, 3) uint8 RGB`` image or a list of them -> ``Detections`` (B = number of images) with
        boxes and keypoints in each image's own pixels (boxes clipped to it)."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        if not len(images):
            raise PredictError("no images given")
        pre = [preprocess(im, self.imgsz, i) for i, im in enumerate(images)]
        step = self.max_batch or len(pre)
        parts = [self.run(np.stack([x for x, _ in pre[i:i + step]])) for i in range(0, len(pre), step)]
        det = Detections(*(torch.cat(t) for t in zip(*((p.num_dets, p.boxes, p.scores, p.labels, p.keypoints)
                                                        for p in parts))))
        boxes, kpts = det.boxes.clone(), det.keypoints.clone()
        for b, (_, meta) in enumerate(pre):
            n = int(det.num_dets[b])
            boxes[b, :n], kpts[b, :n] = undo_letterbox(det.boxes[b, :n], det.keypoints[b, :n], meta["scale"],
                                                       meta["pad"], meta["orig_size"])
        return Detections(det.num_dets, boxes, det.scores, det.labels, kpts)


def _check_size(size: int, info: ModelInfo) -> int:
    if size <= 0 or size % info.stride:
        raise PredictError(f"--image_size {size} is not a multiple of the model's largest stride {info.stride}")
    return size


class TorchPredictor(Predictor):
    """A checkpoint run in PyTorch through the same ``DeployModel`` that export traces. The input size
    defaults to the one the checkpoint was trained at."""

    def __init__(self, ckpt: str | Path, imgsz: int | None = None, conf: float | None = None,
                 iou: float | None = None, max_det: int | None = None, top_k: int | None = None) -> None:
        from yolopose.restore import load_deployable

        model, self.info = load_deployable(ckpt)
        self.size_note = ""
        if imgsz is None and self.info.image_size is None:
            self.size_note = (f"{ckpt} does not record the size it was trained at: using {FALLBACK_IMAGE_SIZE} "
                              "(set --image_size)")
        self.imgsz = _check_size(imgsz or self.info.image_size or FALLBACK_IMAGE_SIZE, self.info)
        d = DEPLOY_DEFAULTS
        self.model = DeployModel(model, self.info.num_classes, d.conf if conf is None else conf,
                                 d.iou if iou is None else iou, d.max_det if max_det is None else max_det,
                                 d.top_k if top_k is None else top_k).eval()
        self.description = (f"{ckpt} (PyTorch, {self.info.variant or '?'}/{self.info.act}, image size {self.imgsz}, "
                            f"conf {self.model.conf:g}, iou {self.model.iou:g})")

    def run(self, batch: np.ndarray) -> Detections:
        with torch.inference_mode():
            return outputs_to_detections(self.model(torch.from_numpy(np.ascontiguousarray(batch))))


class _OnnxSession:
    """``run(batch) -> list of outputs`` over one runtime: onnxruntime or OpenVINO (CPU)."""

    def __init__(self, proto: Any, runtime: str, threads: int | None, precision: str) -> None:
        self.runtime = runtime
        if runtime == "openvino":
            try:
                import openvino as ov
            except ImportError:
                raise PredictError("--runtime openvino needs the openvino package: pip install "
                                   "'yolopose[openvino]'") from None
            if precision not in OPENVINO_PRECISIONS:
                raise PredictError(f"--precision must be one of {', '.join(OPENVINO_PRECISIONS)}, got {precision}")
            core = ov.Core()
            model = core.read_model(model=proto.SerializeToString(), weights=b"")
            config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            self.compiled = core.compile_model(model, "CPU", config)
        else:
            try:
                import onnxruntime as ort
            except ImportError:
                raise PredictError("an ONNX file runs in onnxruntime, which is not installed: pip install "
                                   "'yolopose[export]' (or --runtime openvino)") from None
            so = ort.SessionOptions()
            if threads:
                so.intra_op_num_threads = threads
            so.log_severity_level = 3
            self.session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        if self.runtime == "openvino":
            result = self.compiled({INPUT_NAME: batch})
            return [np.asarray(result[out]) for out in self.compiled.outputs]
        return self.session.run(None, {INPUT_NAME: batch})


class OnnxPredictor(Predictor):
    """An exported ONNX file run in onnxruntime or OpenVINO; thresholds other than the exported ones are
    patched into the graph. The input size is the file's (fixed at export)."""

    def __init__(self, path: str | Path, imgsz: int | None = None, conf: float | None = None,
                 iou: float | None = None, max_det: int | None = None, top_k: int | None = None,
                 threads: int | None = None, runtime: str = "onnxruntime", precision: str = "f32") -> None:
        try:
            import onnx
        except ImportError:
            raise PredictError("reading an ONNX file needs the onnx package: pip install 'yolopose[export]'") from None
        path = Path(path)
        if not path.is_file():
            raise PredictError(f"weights not found: {path}")
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - any protobuf failure means "not an ONNX file"
            raise PredictError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
        try:
            meta = read_metadata(proto)
        except ExportError:
            raise PredictError(f"{path}: not a yolopose ONNX file (no yolopose metadata; export it with "
                               "export.py)") from None
        self.size_note = ""
        self.info = ModelInfo(meta["num_keypoints"], meta["num_classes"], meta["keypoint_names"], meta["skeleton"],
                              meta["category_ids"], meta["sigmas"], meta.get("variant", ""), meta.get("act", ""),
                              meta["stride"], meta.get("trained_image_size"))
        shape = proto.graph.input[0].type.tensor_type.shape
        dims = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
        fixed = dims[2] if dims[2] is not None and dims[2] == dims[3] else None
        if fixed is not None and imgsz is not None and imgsz != fixed:
            raise PredictError(f"{path} has a fixed {fixed}x{fixed} input but --image_size is {imgsz}: drop "
                               f"--image_size (images are letterboxed to the model's size) or re-export with "
                               f"--image_size {imgsz}")
        self.imgsz = _check_size(fixed or imgsz or meta["imgsz"], self.info)
        self.batch = self.max_batch = dims[0]  # None when symbolic
        self.nms = meta["nms"]
        self.max_det = max_det
        d = DEPLOY_DEFAULTS
        if self.nms:
            graph_conf, graph_iou = nms_thresholds(proto)
            if max_det is not None and max_det > meta["max_det"]:
                raise PredictError(f"{path} returns at most {meta['max_det']} detections per image (fixed at export); "
                                   f"--max-det {max_det} needs a re-export with --max-det {max_det}")
            if (conf is not None and conf != graph_conf) or (iou is not None and iou != graph_iou):
                proto = set_nms_thresholds(proto, conf, iou)
            self.conf, self.iou = (graph_conf if conf is None else conf), (graph_iou if iou is None else iou)
        else:
            self.conf, self.iou = d.conf if conf is None else conf, d.iou if iou is None else iou
            self.top_k = d.top_k if top_k is None else top_k
        if runtime not in ("onnxruntime", "openvino"):
            raise PredictError(f"an ONNX file runs in onnxruntime or openvino, not {runtime}")
        self.session = _OnnxSession(proto, runtime, threads, precision)
        how = runtime + (f" {precision}" if runtime == "openvino" else "")
        self.description = (f"{path} ({how}, {'NMS in graph' if self.nms else 'raw graph'}, image size "
                            f"{self.imgsz}, conf {self.conf:g}, iou {self.iou:g})")

    def run(self, batch: np.ndarray) -> Detections:
        n = len(batch)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.batch is not None and self.batch != n:  # a static batch: pad with empty images
            if n > self.batch:
                raise PredictError(f"the ONNX file takes batches of {self.batch}, got {n}")
            batch = np.concatenate([batch, np.zeros((self.batch - n, *batch.shape[1:]), batch.dtype)])
        out = self.session.run(batch)
        if self.nms:
            det = outputs_to_detections(out)
        else:
            det = select_detections(torch.from_numpy(out[0]), self.info.num_classes, self.conf, self.iou,
                                    self.max_det or DEPLOY_DEFAULTS.max_det, self.top_k)
        det = Detections(det.num_dets[:n], det.boxes[:n], det.scores[:n], det.labels[:n], det.keypoints[:n])
        if self.nms and self.max_det is not None:  # fewer than exported: keep the best (rows are by score)
            m = self.max_det
            det = Detections(det.num_dets.clamp(max=m), det.boxes[:, :m], det.scores[:, :m], det.labels[:, :m],
                             det.keypoints[:, :m])
        return det


def load_predictor(weights: str | Path, imgsz: int | None = None, conf: float | None = None,
                   iou: float | None = None, max_det: int | None = None, threads: int | None = None,
                   runtime: str | None = None, precision: str = "f32") -> Predictor:
    """A ``.onnx`` file -> ``OnnxPredictor`` (``runtime`` onnxruntime, the default, or openvino with
    ``precision`` as its ``INFERENCE_PRECISION_HINT``); anything else is read as a yolopose checkpoint
    (``runtime`` torch). ``None`` settings take the file's (ONNX) or ``DEPLOY_DEFAULTS`` (checkpoint)."""
    if runtime is not None and runtime not in RUNTIMES:
        raise PredictError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime}")
    if str(weights).lower().endswith(".onnx"):
        if runtime == "torch":
            raise PredictError(f"{weights} is an ONNX file: --runtime onnxruntime or openvino (torch runs checkpoints)")
        return OnnxPredictor(weights, imgsz, conf, iou, max_det, threads=threads, runtime=runtime or "onnxruntime",
                             precision=precision)
    if runtime not in (None, "torch"):
        raise PredictError(f"--runtime {runtime} runs an exported .onnx file; export {weights} first (export.py) "
                           "or drop --runtime")
    return TorchPredictor(weights, imgsz, conf, iou, max_det)
