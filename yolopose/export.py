"""Deployment: the deploy wrapper (decode + NMS, static outputs), ONNX export and its check, TensorRT.

    python export.py --ckpt CKPT --out model.onnx [--imgsz 640] [--dynamic] [--no-nms] [--engine [--fp16]]

The exported graph (see ``OUTPUT_CONTRACT``) takes ``images (B, 3, S, S)`` float in [0, 1] (RGB,
letterboxed, no normalisation) and runs the network, ``geometry.decode`` and ``postprocess.select_detections``
- the same code as validation - with the NMS as the standard ONNX ``NonMaxSuppression`` operator. Every
output has a static shape except the batch dimension (symbolic with ``--dynamic``).

Exporter: the TorchScript-based ``torch.onnx.export(dynamo=False)`` by default; it maps the
``yolopose::nms`` custom op through ``register_custom_op_symbolic``, writes opset 11-20 (17 by default, which
TensorRT >= 8.5 parses) and exports a tiny model in seconds. ``--exporter dynamo`` uses the
``torch.export`` route (``custom_translation_table``), which needs opset >= 18 and is ~10x slower.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from yolopose.geometry import decode
from yolopose.nn.model import YOLOPose
from yolopose.postprocess import Detections, select_detections

log = logging.getLogger("yolopose.export")

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


# --------------------------------------------------------------------------- the deploy wrapper
class DeployModel(nn.Module):
    """Network + decode + detection selection with static-shaped outputs: what the ONNX graph computes.

    Args:
        model: the network (``PoseModule.inference_model``).
        num_classes: C.
        conf, iou, max_det, top_k: see ``postprocess.select_detections``.
        nms: ``False`` returns the decoded predictions instead (``--no-nms``).
        with_decoded: also return the decoded predictions last (used by the export check).

    ``forward(images (B, 3, S, S) float [0, 1])`` returns ``(num_dets int32 (B,), boxes (B, D, 4),
    scores (B, D), labels int32 (B, D), keypoints (B, D, K, 3))`` with ``D = max_det``; with ``nms=False``
    a single ``(B, N, 4 + 1 + C + 3K)`` tensor.
    """

    def __init__(self, model: YOLOPose, num_classes: int, conf: float = 0.25, iou: float = 0.65,
                 max_det: int = 100, top_k: int = 1000, nms: bool = True, with_decoded: bool = False) -> None:
        super().__init__()
        self.model = model
        self.num_classes, self.conf, self.iou, self.max_det, self.top_k = num_classes, conf, iou, max_det, top_k
        self.nms, self.with_decoded = nms, with_decoded

    def decoded(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> decoded predictions ``(B, N, 4 + 1 + C + 3K)`` in input pixels."""
        return decode(self.model(images), self.model.anchors, self.model.strides, self.num_classes)

    def select(self, decoded: torch.Tensor, conf: float | None = None) -> Detections:
        """``select_detections`` with this wrapper's settings (``conf`` overrides the threshold)."""
        return select_detections(decoded, self.num_classes, self.conf if conf is None else conf, self.iou,
                                 self.max_det, self.top_k)

    def forward(self, images: torch.Tensor) -> Any:
        decoded = self.decoded(images)
        if not self.nms:
            return decoded
        det = self.select(decoded)
        out = (det.num_dets.to(torch.int32), det.boxes, det.scores, det.labels.to(torch.int32), det.keypoints)
        return (*out, decoded) if self.with_decoded else out


def outputs_to_detections(outputs: Sequence[Any]) -> Detections:
    """The five graph outputs (numpy or torch, in ``OUTPUT_NAMES`` order) -> ``Detections`` of torch tensors."""
    t = [torch.as_tensor(np.asarray(o)) for o in outputs[:5]]
    return Detections(t[0].long(), t[1].float(), t[2].float(), t[3].long(), t[4].float())


# --------------------------------------------------------------------------- NMS -> NonMaxSuppression
def _nms_symbolic(g: Any, boxes: Any, scores: Any, max_per_class: Any, iou_threshold: Any,
                  score_threshold: Any) -> Any:
    """TorchScript exporter: ``yolopose::nms`` -> ``NonMaxSuppression`` with constant scalar inputs."""
    from torch.onnx import symbolic_helper as sh

    mpc = sh._get_const(max_per_class, "i", "max_per_class")
    iou = sh._get_const(iou_threshold, "f", "iou_threshold")
    score = sh._get_const(score_threshold, "f", "score_threshold")
    return g.op("NonMaxSuppression", boxes, scores,
                g.op("Constant", value_t=torch.tensor(int(mpc), dtype=torch.int64)),
                g.op("Constant", value_t=torch.tensor(float(iou), dtype=torch.float32)),
                g.op("Constant", value_t=torch.tensor(float(score), dtype=torch.float32)))


_SYMBOLIC_REGISTERED = False


def _register_nms_symbolic() -> None:
    global _SYMBOLIC_REGISTERED
    if not _SYMBOLIC_REGISTERED:
        torch.onnx.register_custom_op_symbolic("yolopose::nms", _nms_symbolic, MIN_OPSET)
        _SYMBOLIC_REGISTERED = True


def _nms_translation_table() -> dict:
    """dynamo exporter: ``yolopose::nms`` -> ``NonMaxSuppression`` (an onnxscript function)."""
    from onnxscript import opset18 as op

    def nms_onnx(boxes: Any, scores: Any, max_per_class: int, iou_threshold: float, score_threshold: float) -> Any:
        return op.NonMaxSuppression(boxes, scores, op.Constant(value_int=max_per_class),
                                    op.Constant(value_float=iou_threshold), op.Constant(value_float=score_threshold))

    return {torch.ops.yolopose.nms.default: nms_onnx}


# --------------------------------------------------------------------------- export
@dataclass
class ExportOptions:
    """What to export. ``batch`` is the static batch size, or with ``dynamic`` the TensorRT profile's maximum."""
    imgsz: int = 640
    opset: int = DEFAULT_OPSET
    dynamic: bool = False
    batch: int = 1
    nms: bool = True
    conf: float = 0.25
    iou: float = 0.65
    max_det: int = 100
    top_k: int = 1000
    exporter: str = "torchscript"


@dataclass
class ModelInfo:
    """What a deployed model needs to know besides its weights (stored in the ONNX metadata)."""
    num_keypoints: int
    num_classes: int
    keypoint_names: list[str]
    skeleton: list[list[int]]
    category_ids: list[int]
    sigmas: list[float] = field(default_factory=list)
    variant: str = ""
    act: str = "silu"
    stride: int = 64

    @classmethod
    def from_module(cls, module: Any) -> "ModelInfo":
        """From a ``PoseModule`` (its hyperparameters), with defaults for what the dataset left out."""
        hp = module.hparams
        k, c = int(hp["num_keypoints"]), int(hp["num_classes"])
        return cls(num_keypoints=k, num_classes=c,
                   keypoint_names=list(hp.get("keypoint_names") or [f"kpt{i}" for i in range(k)]),
                   skeleton=[[int(a), int(b)] for a, b in (hp.get("skeleton") or [])],
                   category_ids=[int(i) for i in (hp.get("category_ids") or range(1, c + 1))],
                   sigmas=[float(s) for s in getattr(module, "sigmas", [])],
                   variant=str(hp.get("variant", "")), act=str(hp.get("act", "silu")),
                   stride=int(max(module.inference_model.strides)))


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
        "input": f"{INPUT_NAME} (B, 3, {opts.imgsz}, {opts.imgsz}) float32 RGB in [0, 1], letterboxed",
    }
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
    for key in ("imgsz", "stride", "num_keypoints", "num_classes", "max_det", "top_k"):
        if key in raw:
            out[key] = int(raw[key])
    for key in ("conf_threshold", "iou_threshold"):
        if key in raw:
            out[key] = float(raw[key])
    out["nms"] = raw.get("nms") == "true"
    out["dynamic_batch"] = raw.get("dynamic_batch") == "true"
    return out


def _set_output_shapes(proto: Any, names: Sequence[str], shapes: Sequence[Sequence[int | str]]) -> None:
    """Write the documented static shapes onto the graph outputs (the tracer leaves some symbolic)."""
    by_name = {o.name: o for o in proto.graph.output}
    for name, shape in zip(names, shapes):
        dims = by_name[name].type.tensor_type.shape.dim
        del dims[:]
        for d in shape:
            dim = dims.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = int(d)


def export_onnx(module: Any, out: str | Path, opts: ExportOptions) -> Any:
    """Export a ``PoseModule``'s inference model to ``out`` and return the in-memory ``ModelProto``.

    With NMS the in-memory model carries one extra output, ``decoded`` (the decoded predictions), for the
    check; the file written to ``out`` is the same graph without it.
    """
    import onnx

    info = ModelInfo.from_module(module)
    if opts.imgsz % info.stride:
        raise ExportError(f"--imgsz {opts.imgsz} is not a multiple of the model's largest stride {info.stride}")
    if opts.exporter == "dynamo" and opts.opset < DYNAMO_MIN_OPSET:
        raise ExportError(f"the dynamo exporter writes opset >= {DYNAMO_MIN_OPSET}; got --opset {opts.opset}")
    if not MIN_OPSET <= opts.opset <= 21:
        raise ExportError(f"--opset must be in {MIN_OPSET}..21, got {opts.opset}")
    if opts.top_k < 1 or opts.max_det < 1:
        raise ExportError("--max-det and --top-k must be >= 1")
    net = module.inference_model.float().eval()
    wrapper = DeployModel(net, info.num_classes, opts.conf, opts.iou, opts.max_det, opts.top_k, opts.nms,
                          with_decoded=opts.nms).eval()
    out_names = [*OUTPUT_NAMES, "decoded"] if opts.nms else [RAW_OUTPUT_NAME]
    batch: int | str = "batch" if opts.dynamic else opts.batch
    # dynamo specialises a batch of 1 to a constant: trace a dynamic batch at 2
    example = torch.rand(2 if opts.dynamic else opts.batch, 3, opts.imgsz, opts.imgsz)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if opts.exporter == "dynamo":
                shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if opts.dynamic else None
                torch.onnx.export(wrapper, (example,), str(path), dynamo=True, external_data=False,
                                  opset_version=opts.opset, input_names=[INPUT_NAME], output_names=out_names,
                                  dynamic_shapes=shapes, custom_translation_table=_nms_translation_table(),
                                  verbose=False)
            elif opts.exporter == "torchscript":
                _register_nms_symbolic()
                axes = {n: {0: "batch"} for n in [INPUT_NAME, *out_names]} if opts.dynamic else None
                torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=opts.opset,
                                  input_names=[INPUT_NAME], output_names=out_names, dynamic_axes=axes,
                                  do_constant_folding=True)
            else:
                raise ExportError(f"unknown exporter {opts.exporter!r} (torchscript or dynamo)")
        proto = onnx.load(str(path))
    n = sum(net.num_anchors * (opts.imgsz // int(s)) ** 2 for s in net.strides)  # predictions per image
    dim = 5 + info.num_classes + 3 * info.num_keypoints
    if opts.nms:
        d = opts.max_det
        _set_output_shapes(proto, out_names, [[batch], [batch, d, 4], [batch, d], [batch, d],
                                              [batch, d, info.num_keypoints, 3], [batch, n, dim]])
    else:
        _set_output_shapes(proto, out_names, [[batch, n, dim]])
    if opts.dynamic:
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    proto.producer_name = "yolopose"
    del proto.metadata_props[:]
    for key, value in build_metadata(info, opts).items():
        proto.metadata_props.add(key=key, value=value)
    final = _without_output(proto, "decoded") if opts.nms else proto
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(final, str(out))
    return proto


def _without_output(proto: Any, name: str) -> Any:
    """A copy of ``proto`` without the graph output ``name`` (nodes untouched)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    keep = [o for o in copy.graph.output if o.name != name]
    del copy.graph.output[:]
    copy.graph.output.extend(keep)
    return copy


# --------------------------------------------------------------------------- graph inspection and edits
def graph_op_types(proto: Any) -> set[tuple[str, str]]:
    """``(domain, op_type)`` of every node, subgraphs included (``""`` is the standard domain)."""
    found: set[tuple[str, str]] = set()

    def walk(graph: Any) -> None:
        for node in graph.node:
            found.add((node.domain, node.op_type))
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(proto.graph)
    return found


def _constant_producers(proto: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    inits = {i.name: i for i in proto.graph.initializer}
    consts = {n.output[0]: n for n in proto.graph.node if n.op_type == "Constant"}
    return inits, consts


def _read_scalar(proto: Any, name: str) -> float:
    from onnx import numpy_helper

    inits, consts = _constant_producers(proto)
    if name in inits:
        return float(numpy_helper.to_array(inits[name]).reshape(-1)[0])
    if name in consts:
        return float(numpy_helper.to_array(consts[name].attribute[0].t).reshape(-1)[0])
    raise ExportError(f"NonMaxSuppression input {name!r} is not a constant")


def _write_scalar(proto: Any, name: str, value: float) -> None:
    from onnx import numpy_helper

    inits, consts = _constant_producers(proto)
    if name in inits:
        old = numpy_helper.to_array(inits[name])
        inits[name].CopyFrom(numpy_helper.from_array(np.full(old.shape, value, old.dtype), name))
    elif name in consts:
        attr = consts[name].attribute[0]
        old = numpy_helper.to_array(attr.t)
        attr.t.CopyFrom(numpy_helper.from_array(np.full(old.shape, value, old.dtype)))
    else:
        raise ExportError(f"NonMaxSuppression input {name!r} is not a constant")


def nms_thresholds(proto: Any) -> tuple[float, float]:
    """``(conf, iou)`` thresholds of the graph's ``NonMaxSuppression``."""
    node = _nms_node(proto)
    return _read_scalar(proto, node.input[4]), _read_scalar(proto, node.input[3])


def set_nms_thresholds(proto: Any, conf: float | None = None, iou: float | None = None) -> Any:
    """A copy of ``proto`` whose ``NonMaxSuppression`` uses other thresholds.

    The confidence threshold of the exported graph is exactly NMS's ``score_threshold`` (see
    ``select_detections``), so this equals exporting with ``--conf conf --iou iou``.
    """
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    node = _nms_node(copy)
    if conf is not None:
        _write_scalar(copy, node.input[4], conf)
    if iou is not None:
        _write_scalar(copy, node.input[3], iou)
    return copy


def _nms_node(proto: Any) -> Any:
    nodes = [n for n in proto.graph.node if n.op_type == "NonMaxSuppression"]
    if len(nodes) != 1:
        raise ExportError(f"expected one NonMaxSuppression node in the graph, found {len(nodes)}")
    return nodes[0]


# --------------------------------------------------------------------------- the check
@dataclass
class Tolerance:
    """Largest allowed |ONNX - PyTorch|: ``px + rel * |x|`` for box and keypoint coordinates ``x`` (pixels),
    ``prob`` for probabilities. ``rel`` covers float32 rounding that grows with a coordinate's magnitude
    (a stride-64 keypoint is 128 x a raw output); at 640 px it allows 2.3e-3 px. Measured: n and s at
    640 stay below 4e-4 px."""
    px: float = 1e-3
    rel: float = 2e-6
    prob: float = 1e-4

    def excess(self, got: torch.Tensor, ref: torch.Tensor) -> float:
        """Largest ``|got - ref| / (px + rel |ref|)``: <= 1 means within tolerance."""
        if got.numel() == 0:
            return 0.0
        return float(((got - ref).abs() / (self.px + self.rel * ref.abs())).max())


@dataclass
class CheckReport:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    compared: int = 0  # detections compared one to one (all stages, all images)
    outputs: list = field(default_factory=list)  # onnxruntime's outputs at the graph's own threshold


def check_images(imgsz: int, batch: int, seed: int = 0) -> np.ndarray:
    """``(batch, 3, S, S)`` float32: synthetic scenes with people, letterboxed as predict.py does."""
    from yolopose.data.synthetic import SyntheticConfig
    from yolopose.data.synthetic_scene import render_scene
    from yolopose.predict import preprocess

    out = []
    for i in range(batch):
        rng = np.random.default_rng(seed + i)
        bgr, _ = render_scene(rng, SyntheticConfig(max_people=6), imgsz, imgsz * 3 // 4)
        out.append(preprocess(bgr[..., ::-1], imgsz)[0])
    return np.stack(out).astype(np.float32)


def _match(a: Detections, b: Detections, tol: Tolerance) -> tuple[int, str | None]:
    """Compare two batches of detections one to one; ``(compared, first problem or None)``.

    Detections of equal score (within ``tol.prob``) may come in either order; they are paired by box.
    """
    compared = 0
    for i in range(len(a.num_dets)):
        da, db = a.image(i), b.image(i)
        na, nb = int(da.num_dets), int(db.num_dets)
        if na != nb:
            return compared, f"image {i}: {na} vs {nb} detections"
        used = np.zeros(nb, bool)
        sa, sb = da.scores.numpy(), db.scores.numpy()
        for j in range(na):
            ok = (~used) & (np.abs(sb - sa[j]) <= tol.prob) & (db.labels.numpy() == int(da.labels[j]))
            if not ok.any():
                return compared, f"image {i}, detection {j}: no counterpart with score {sa[j]:.5f}"
            cand = np.flatnonzero(ok)
            err = np.abs(db.boxes.numpy()[cand] - da.boxes.numpy()[j]).max(1)
            m = cand[int(err.argmin())]
            kb, ka = db.keypoints[m], da.keypoints[j]  # (K, 3), K >= 1
            box_err = float((db.boxes[m] - da.boxes[j]).abs().max())
            kp_err = float((kb[:, :2] - ka[:, :2]).abs().max())
            kc_err = float((kb[:, 2] - ka[:, 2]).abs().max())
            over = max(tol.excess(db.boxes[m], da.boxes[j]), tol.excess(kb[:, :2], ka[:, :2]))
            if over > 1 or kc_err > tol.prob:
                return compared, (f"image {i}, detection {j}: box differs by {box_err:.2e} px, keypoints by "
                                  f"{kp_err:.2e} px, keypoint confidence by {kc_err:.2e}")
            used[m] = True
            compared += 1
    return compared, None


def _has_exact_ties(decoded: torch.Tensor, num_classes: int, top_k: int) -> bool:
    """Do the candidates entering NMS contain exactly equal scores (an untrained model's priors, padding)?"""
    obj = decoded[..., 4:5]
    s = obj[..., 0] if num_classes == 1 else (decoded[..., 5:5 + num_classes] * obj).max(-1).values
    top = s.topk(min(top_k, s.shape[1]), dim=1).values
    return bool((top[:, 1:] == top[:, :-1]).any())


def tie_free(decoded: torch.Tensor) -> torch.Tensor:
    """A copy of decoded predictions whose objectness values are all distinct: each replaced by its rank,
    spread evenly over (0.001, 0.999). Order-preserving (ties broken by index), so on this input every
    correct implementation of the selection (TopK + NMS + ranking) gives exactly one answer."""
    b, n = decoded.shape[:2]
    order = torch.argsort(decoded[..., 4], dim=1, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(n).expand(b, n).contiguous())
    out = decoded.clone()
    out[..., 4] = 0.001 + 0.998 * ranks.to(decoded.dtype) / max(n - 1, 1)
    return out


def _session(model: Any) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = min(4, torch.get_num_threads())
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # a check, not a benchmark
    so.log_severity_level = 3
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def check_decoded(got: torch.Tensor, ref: torch.Tensor, num_classes: int, tol: Tolerance, report: CheckReport) -> None:
    """Every decoded prediction ``(B, N, 4 + 1 + C + 3K)``: coordinates and probabilities within ``tol``.

    Raises:
        VerificationError: outside the tolerance.
    """
    c = num_classes
    diff = (got - ref).abs()
    box_err = float(diff[..., :4].max())
    kpt = diff[..., 5 + c:].reshape(*diff.shape[:2], -1, 3)
    kp_err = float(kpt[..., :2].max()) if kpt.numel() else 0.0
    prob_err = max(float(diff[..., 4:5 + c].max()), float(kpt[..., 2].max()) if kpt.numel() else 0.0)
    k_got = got[..., 5 + c:].reshape(*diff.shape[:2], -1, 3)[..., :2]
    k_ref = ref[..., 5 + c:].reshape(*diff.shape[:2], -1, 3)[..., :2]
    over = max(tol.excess(got[..., :4], ref[..., :4]), tol.excess(k_got, k_ref))
    report.lines.append(f"decoded predictions ({ref.shape[0]} x {ref.shape[1]}): max |ONNX - PyTorch| "
                        f"box {box_err:.2e} px, keypoints {kp_err:.2e} px, probabilities {prob_err:.2e}")
    if over > 1 or prob_err > tol.prob:
        raise VerificationError(f"onnxruntime's decoded predictions differ from PyTorch's (box {box_err:.2e} px, "
                                f"keypoints {kp_err:.2e} px, probabilities {prob_err:.2e}; tolerance "
                                f"{tol.px:g} px + {tol.rel:g} x |coordinate|, {tol.prob:g})")


def verify_onnx(proto: Any, wrapper: DeployModel, images: np.ndarray, tol: Tolerance = Tolerance(),
                low_conf: float = 0.001) -> CheckReport:
    """Run the exported graph (with its extra ``decoded`` output) in onnxruntime and compare with PyTorch.

    1. Network + decode, on ``images (B, 3, S, S)``: every decoded prediction, boxes and keypoints within
       ``tol.px`` pixels, probabilities within ``tol.prob``.
    2. Selection (TopK + NonMaxSuppression + ranking): the graph's post-processing part (``decoded`` ->
       outputs, cut out of the same graph) against ``select_detections`` on one tie-free input (``tie_free``
       of the decoded predictions; most candidates pass the threshold): the detections must be identical.
    3. End to end on the images: graph vs the PyTorch ``DeployModel``, detections within ``tol``. When the
       graph's threshold leaves no detection, this is repeated with the threshold lowered to ``low_conf``.

    Raises:
        VerificationError: 1 or 2 fails. Given 1 and 2, a difference in 3 can only come from exactly tied
            scores or float rounding deciding a threshold, and is reported as a warning.
    """
    import onnx.utils

    report = CheckReport()
    with torch.no_grad():
        ref_decoded = wrapper.decoded(torch.from_numpy(images))
    outs = _session(proto).run(None, {INPUT_NAME: images})
    report.outputs = outs
    ort_decoded = torch.from_numpy(outs[-1])
    c = wrapper.num_classes
    # 1. network + decode
    check_decoded(ort_decoded, ref_decoded, c, tol, report)
    # 2. selection, on one input for both
    conf, _ = nms_thresholds(proto)
    # the part of the graph after ``decoded``; it may read the batch size off ``images`` (dynamo does)
    post = onnx.utils.Extractor(proto).extract_model([INPUT_NAME, "decoded"], list(OUTPUT_NAMES))
    synthetic = tie_free(ort_decoded)
    feed = {INPUT_NAME: images, "decoded": synthetic.numpy()}
    feed = {i.name: feed[i.name] for i in post.graph.input}
    got = outputs_to_detections(_session(post).run(None, feed))
    with torch.no_grad():
        ref = wrapper.select(synthetic, conf)
    n2, problem = _match(got, ref, Tolerance(px=1e-5, rel=0.0, prob=1e-6))
    if problem:
        raise VerificationError(f"the graph's TopK/NonMaxSuppression selection differs from select_detections on "
                                f"the same decoded input: {problem}")
    report.lines.append(f"selection (TopK + NonMaxSuppression + ranking) on a tie-free decoded input: {n2} "
                        f"detections identical to PyTorch's")
    if n2 == 0:
        report.warnings.append(f"the selection check compared 0 detections (conf {conf:g} is above every score)")
    report.compared += n2
    # 3. end to end
    ties = _has_exact_ties(ref_decoded, c, wrapper.top_k)

    def end_to_end(o: list[np.ndarray], conf: float) -> int:
        got = outputs_to_detections(o)
        with torch.no_grad():
            ref = wrapper.select(ref_decoded, conf)
        total = int(got.num_dets.sum())
        n3, problem = _match(got, ref, tol)
        if not problem and total == 0:
            report.lines.append(f"conf {conf:g}: end to end: 0 detections in onnxruntime and in PyTorch")
            return 0
        if problem:
            why = (" (the model's scores contain exact ties - untrained weights, uniform padding? - and tied "
                   "boxes may be kept in either order)" if ties else " (the decoded predictions agree within "
                   "tolerance, so float rounding decided a threshold or a rank)")
            report.warnings.append(f"conf {conf:g}: end to end vs PyTorch: {problem}{why}")
        else:
            report.lines.append(f"conf {conf:g}: end to end vs PyTorch on the check images: {n3} detections match "
                                f"(boxes and keypoints within {tol.px:g} px + {tol.rel:g} x |coordinate|, scores "
                                f"within {tol.prob:g})")
        report.compared += n3
        return total

    if end_to_end(outs, conf) == 0 and conf > low_conf:
        report.lines.append(f"conf {conf:g} leaves no detection on the check images: repeating at conf {low_conf:g} "
                            "(the graph's threshold lowered in a copy)")
        end_to_end(_session(set_nms_thresholds(proto, conf=low_conf)).run(None, {INPUT_NAME: images}), low_conf)
    if report.compared == n2:
        report.warnings.append("end to end, the check compared 0 detections (no score above the threshold on the "
                               "check images)")
    return report


def _check_saved_file(path: Path, report: CheckReport, images: np.ndarray) -> None:
    """The written file must give exactly what the verified in-memory graph gave (minus ``decoded``)."""
    got = _session(path).run(None, {INPUT_NAME: images})
    for name, x, y in zip(OUTPUT_NAMES, got, report.outputs):
        if x.shape != y.shape or not np.array_equal(x, y):
            raise VerificationError(f"{path}: output {name} differs from the verified graph's")


# --------------------------------------------------------------------------- TensorRT
def trtexec_command(onnx_path: str | Path, engine_path: str | Path, fp16: bool, imgsz: int, dynamic: bool,
                    batch: int) -> str:
    """The ``trtexec`` command line that builds the same engine as ``build_engine``."""
    cmd = f"trtexec --onnx={onnx_path} --saveEngine={engine_path}"
    if dynamic:
        cmd += (f" --minShapes={INPUT_NAME}:1x3x{imgsz}x{imgsz} --optShapes={INPUT_NAME}:{batch}x3x{imgsz}x{imgsz}"
                f" --maxShapes={INPUT_NAME}:{batch}x3x{imgsz}x{imgsz}")
    return cmd + (" --fp16" if fp16 else "")


def build_engine(onnx_path: str | Path, engine_path: str | Path, fp16: bool = False, imgsz: int = 640,
                 dynamic: bool = False, batch: int = 1, workspace_gb: float = 4.0) -> Path:
    """Build a serialized TensorRT engine from the ONNX file with the ``tensorrt`` Python API.

    Raises:
        TensorRTUnavailable: ``tensorrt`` does not import (the message holds the ``trtexec`` command).
        ExportError: the parser or the builder failed.
    """
    hint = trtexec_command(onnx_path, engine_path, fp16, imgsz, dynamic, batch)
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install failing on its CUDA libraries
        raise TensorRTUnavailable(f"TensorRT is not available here ({type(exc).__name__}: {exc}); the ONNX file is "
                                  f"written. Build the engine on the target machine with:  {hint}") from None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(str(trt.__version__).split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        if not builder.platform_has_fast_fp16:
            log.warning("this GPU has no fast FP16; building an FP16 engine anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    if dynamic:
        profile = builder.create_optimization_profile()
        lo, hi = (1, 3, imgsz, imgsz), (batch, 3, imgsz, imgsz)
        profile.set_shape(INPUT_NAME, lo, hi, hi)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path = Path(engine_path)
    engine_path.write_bytes(bytes(serialized))
    return engine_path


# --------------------------------------------------------------------------- CLI
def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message as one line (the first line of a multi-line message, capped at ``limit``)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    if len(lines) > 1 and text.count("(") > text.count(")"):
        text = text.rstrip(" .:") + " ...)"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="export.py", description="Export a yolopose checkpoint to ONNX (decode + NMS inside, static outputs), "
        "check it against PyTorch with onnxruntime, optionally build a TensorRT engine.")
    p.add_argument("--ckpt", required=True, help="yolopose checkpoint (.ckpt) written by train.py")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--imgsz", type=int, default=640, help="square input size (a multiple of the largest stride)")
    p.add_argument("--opset", type=int, default=None,
                   help=f"ONNX opset (default {DEFAULT_OPSET}; {DYNAMO_MIN_OPSET} with --exporter dynamo)")
    p.add_argument("--dynamic", action="store_true", help="symbolic batch dimension")
    p.add_argument("--batch", type=int, default=1,
                   help="static batch size; with --dynamic the TensorRT profile's maximum batch")
    p.add_argument("--no-nms", dest="nms", action="store_false",
                   help=f"output the raw decoded predictions '{RAW_OUTPUT_NAME}' (B, N, 5+C+3K) instead")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold baked into the graph")
    p.add_argument("--iou", type=float, default=0.65, help="NMS IoU threshold baked into the graph")
    p.add_argument("--max-det", type=int, default=100, help="detections per image (static output size D)")
    p.add_argument("--top-k", type=int, default=1000,
                   help="candidates entering NMS per image (TensorRT's NMS takes at most a few thousand)")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    p.add_argument("--check-image", default=None,
                   help="image for the onnxruntime check (default: generated scenes with people)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the onnxruntime check")
    p.add_argument("--engine", action="store_true", help="also build a TensorRT engine (next to --out, .engine)")
    p.add_argument("--fp16", action="store_true", help="FP16 TensorRT engine (the ONNX file stays FP32)")
    p.add_argument("--workspace", type=float, default=4.0, help="TensorRT builder workspace in GiB")
    a = p.parse_args(argv)
    if a.opset is None:
        a.opset = DYNAMO_MIN_OPSET if a.exporter == "dynamo" else DEFAULT_OPSET
    return a


def run(a: argparse.Namespace) -> int:
    from yolopose.checkpoint import load_module

    if a.fp16 and not a.engine:
        raise ExportError("--fp16 sets the TensorRT engine's precision: use it with --engine "
                          "(the ONNX graph is exported in FP32)")
    if a.batch < 1:
        raise ExportError("--batch must be >= 1")
    module = load_module(a.ckpt)
    opts = ExportOptions(imgsz=a.imgsz, opset=a.opset, dynamic=a.dynamic, batch=a.batch, nms=a.nms, conf=a.conf,
                         iou=a.iou, max_det=a.max_det, top_k=a.top_k, exporter=a.exporter)
    out = Path(a.out)
    proto = export_onnx(module, out, opts)
    import onnx

    onnx.checker.check_model(str(out), full_check=True)
    info = ModelInfo.from_module(module)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {opts.opset}, {opts.exporter} exporter, "
          f"act {info.act}, K={info.num_keypoints}, C={info.num_classes}); onnx.checker: ok")
    if a.check:
        batch = 2 if a.dynamic else a.batch
        if a.check_image:
            from yolopose.data.image_io import read_image
            from yolopose.predict import preprocess

            one = preprocess(read_image(a.check_image), a.imgsz)[0]
            images = np.stack([one] * batch).astype(np.float32)
        else:
            images = check_images(a.imgsz, batch)
        wrapper = DeployModel(module.inference_model.float().eval(), info.num_classes, a.conf, a.iou,
                              a.max_det, a.top_k)
        if a.nms:
            report = verify_onnx(proto, wrapper, images)
            _check_saved_file(out, report, images)
        else:
            report = CheckReport()
            with torch.no_grad():
                ref = wrapper.decoded(torch.from_numpy(images))
            got = torch.from_numpy(_session(out).run(None, {INPUT_NAME: images})[0])
            check_decoded(got, ref, info.num_classes, Tolerance(), report)
        for line in report.lines:
            print(f"check: {line}")
        for line in report.warnings:
            print(f"check: WARNING: {line}")
        if a.dynamic:
            print("check: ran at batch 2 (batch dimension symbolic)")
    if a.engine:
        engine = build_engine(out, out.with_suffix(".engine"), a.fp16, a.imgsz, a.dynamic, a.batch, a.workspace)
        print(f"wrote {engine} (TensorRT{', FP16' if a.fp16 else ''})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 on success; a one-line ``error:`` on stderr and 1 on failure (3: TensorRT missing)."""
    from yolopose.checkpoint import CheckpointError
    from yolopose.data.image_io import ImageReadError

    a = parse_args(argv)
    try:
        return run(a)
    except TensorRTUnavailable as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 3
    except (CheckpointError, ExportError, ImageReadError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - onnx checker / exporter failures: one line, not a traceback
        import onnx

        if isinstance(exc, (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)):
            print(f"error: onnx.checker rejected {a.out}: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
        raise
