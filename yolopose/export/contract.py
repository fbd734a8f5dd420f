"""The deployed model's contract: input/output names and shapes, the ONNX metadata, the errors.

``OUTPUT_CONTRACT`` is what the README documents; ``ModelInfo`` is what a deployed model needs besides
its weights (stored in ``metadata_props`` so an ``.onnx`` file alone is enough for ``predict.py``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

INPUT_NAME = "images"
OUTPUT_NAMES = ("num_dets", "boxes", "scores", "labels", "keypoints")
RAW_OUTPUT_NAME = "predictions"
DEFAULT_OPSET = 17
MIN_OPSET = 11          # NonMaxSuppression with its current inputs; TopK with a K input
DYNAMO_MIN_OPSET = 18   # onnxscript's torchlib targets opset 18; older targets fail to convert
METADATA_FORMAT = "yolopose-pose-v1"

OUTPUT_CONTRACT = """\
num_dets  (B,)           int32    valid detections per image (rows past it are zeros)
boxes     (B, D, 4)      float32  x1, y1, x2, y2 in input pixels (letterboxed image)
scores    (B, D)         float32  objectness x class probability, descending
labels    (B, D)         int32    class index (0-based; category ids in metadata)
keypoints (B, D, K, 3)   float32  x, y in input pixels, confidence in [0, 1]"""

# Operators TensorRT's ONNX parser imports natively (TensorRT >= 8.5, onnx-tensorrt operator matrix)
# that this graph may use. The export test asserts the graph stays inside this list.
TENSORRT_OPS = frozenset({
    "Add", "And", "ArgMax", "Cast", "Concat", "Constant", "ConstantOfShape", "Conv", "Div", "Equal", "Expand",
    "Flatten", "Gather", "GatherElements", "Gemm", "Greater", "GreaterOrEqual", "Identity", "Less", "LessOrEqual",
    "MatMul", "Max", "MaxPool", "Min", "Mod", "Mul", "Neg", "NonMaxSuppression", "Not", "Or", "Pow", "Range",
    "ReduceMax", "ReduceSum", "Relu", "Reshape", "Resize", "Shape", "Sigmoid", "Slice", "Split", "Squeeze", "Sub",
    "Tile", "TopK", "Transpose", "Unsqueeze", "Where",
})


class ExportError(RuntimeError):
    """Export cannot proceed or its result is wrong; the message says why (one line)."""


class VerificationError(ExportError):
    """onnxruntime disagrees with PyTorch on the exported graph."""


class TensorRTUnavailable(ExportError):
    """``tensorrt`` does not import here; the message carries the equivalent ``trtexec`` command."""


@dataclass(frozen=True)
class DeploySettings:
    """Detection settings of a deployed model: the one place their defaults are written.

    ``conf`` score threshold, ``iou`` NMS IoU threshold, ``max_det`` detections per image (the static output
    size D), ``top_k`` candidates entering NMS per image (TensorRT's NMS takes at most a few thousand).
    Validation uses its own, lower threshold (``PoseModule.conf_threshold``) to measure AP.
    """
    conf: float = 0.25
    iou: float = 0.65
    max_det: int = 100
    top_k: int = 1000


DEPLOY_DEFAULTS = DeploySettings()


@dataclass
class ExportOptions:
    """What to export. ``batch`` is the static batch size, or with ``dynamic`` the TensorRT profile's maximum."""
    imgsz: int = 640
    opset: int = DEFAULT_OPSET
    dynamic: bool = False
    batch: int = 1
    nms: bool = True
    conf: float = DEPLOY_DEFAULTS.conf
    iou: float = DEPLOY_DEFAULTS.iou
    max_det: int = DEPLOY_DEFAULTS.max_det
    top_k: int = DEPLOY_DEFAULTS.top_k
    exporter: str = "torchscript"
    half: bool = False   # the network in float16 (inputs, outputs, decode and NMS stay float32)

    @property
    def settings(self) -> DeploySettings:
        return DeploySettings(self.conf, self.iou, self.max_det, self.top_k)


@dataclass
class ModelInfo:
    """What a deployed model needs to know besides its weights (stored in the ONNX metadata).

    ``image_size`` is the input size the model was trained and validated at (``None`` for a checkpoint
    written before yolopose recorded it); ``stride`` the largest stride (input sizes are multiples of it).
    """
    num_keypoints: int
    num_classes: int
    keypoint_names: list[str]
    skeleton: list[list[int]]
    category_ids: list[int]
    sigmas: list[float] = field(default_factory=list)
    variant: str = ""
    act: str = "silu"
    stride: int = 64
    image_size: int | None = None

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any], stride: int, image_size: int | None = None) -> "ModelInfo":
        """From a checkpoint's hyperparameters, with defaults for what the dataset left out."""
        from yolopose.geometry import default_sigmas

        k, c = int(hp["num_keypoints"]), int(hp["num_classes"])
        sigmas = hp.get("sigmas")
        return cls(num_keypoints=k, num_classes=c,
                   keypoint_names=list(hp.get("keypoint_names") or [f"kpt{i}" for i in range(k)]),
                   skeleton=[[int(a), int(b)] for a, b in (hp.get("skeleton") or [])],
                   category_ids=[int(i) for i in (hp.get("category_ids") or range(1, c + 1))],
                   sigmas=[float(s) for s in (sigmas if sigmas is not None else default_sigmas(k).tolist())],
                   variant=str(hp.get("variant", "")), act=str(hp.get("act", "silu")), stride=int(stride),
                   image_size=None if image_size is None else int(image_size))


def build_metadata(info: ModelInfo, opts: ExportOptions) -> dict[str, str]:
    """``metadata_props`` of the exported file: everything ``predict.py`` needs besides the graph."""
    from yolopose import __version__

    meta = {
        "format": METADATA_FORMAT, "yolopose_version": __version__, "exporter": opts.exporter,
        "variant": info.variant, "act": info.act, "imgsz": str(opts.imgsz), "stride": str(info.stride),
        "num_keypoints": str(info.num_keypoints), "num_classes": str(info.num_classes),
        "keypoint_names": json.dumps(info.keypoint_names), "skeleton": json.dumps(info.skeleton),
        "category_ids": json.dumps(info.category_ids), "sigmas": json.dumps(info.sigmas),
        "nms": "true" if opts.nms else "false", "dynamic_batch": "true" if opts.dynamic else "false",
        "precision": "fp16" if opts.half else "fp32",
        "input": f"{INPUT_NAME} (B, 3, {opts.imgsz}, {opts.imgsz}) float32 RGB in [0, 1], letterboxed",
    }
    if info.image_size is not None:
        meta["trained_image_size"] = str(info.image_size)
    if opts.nms:
        meta.update({"conf_threshold": repr(opts.conf), "iou_threshold": repr(opts.iou),
                     "max_det": str(opts.max_det), "top_k": str(opts.top_k),
                     "outputs": f"D = {opts.max_det}, K = {info.num_keypoints}\n{OUTPUT_CONTRACT}"})
    else:
        meta["outputs"] = (f"{RAW_OUTPUT_NAME} (B, N, {5 + info.num_classes + 3 * info.num_keypoints}) float32: "
                           "box xyxy, objectness, class probabilities, K x (x, y, confidence), input pixels")
    return meta


def read_metadata(model: Any) -> dict[str, Any]:
    """The yolopose metadata of an ONNX model (path or ``ModelProto``), JSON fields decoded.

    Raises:
        ExportError: not a yolopose ONNX file.
    """
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    raw = {p.key: p.value for p in proto.metadata_props}
    if raw.get("format") != METADATA_FORMAT:
        raise ExportError(f"{model if not isinstance(model, onnx.ModelProto) else 'model'}: not a yolopose ONNX "
                          "file (no yolopose metadata; export it with export.py)")
    out: dict[str, Any] = dict(raw)
    for key in ("keypoint_names", "skeleton", "category_ids", "sigmas"):
        out[key] = json.loads(raw[key])
    for key in ("imgsz", "stride", "num_keypoints", "num_classes", "max_det", "top_k", "trained_image_size"):
        if key in raw:
            out[key] = int(raw[key])
    for key in ("conf_threshold", "iou_threshold"):
        if key in raw:
            out[key] = float(raw[key])
    out["nms"] = raw.get("nms") == "true"
    out["dynamic_batch"] = raw.get("dynamic_batch") == "true"
    return out


