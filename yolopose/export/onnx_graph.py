"""Writing the ONNX graph (``yolopose::nms`` -> standard ``NonMaxSuppression``), inspecting and editing it.

Exporter: the TorchScript-based ``torch.onnx.export(dynamo=False)`` by default; it maps the
``yolopose::nms`` custom op through ``register_custom_op_symbolic``, writes opset 11-21 (17 by default, which
TensorRT >= 8.5 parses) and exports a tiny model in seconds. ``dynamo`` uses the ``torch.export`` route
(``custom_translation_table``), which needs opset >= 18 and is ~10x slower.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from yolopose.export.contract import (DYNAMO_MIN_OPSET, INPUT_NAME, MIN_OPSET, OUTPUT_NAMES, RAW_OUTPUT_NAME,
                                      ExportError, ExportOptions, ModelInfo, build_metadata)
from yolopose.export.wrapper import DecodedModel, DeployModel
from yolopose.nn.model import YOLOPose


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


def register_nms_symbolic() -> None:
    """Map ``yolopose::nms`` to ONNX ``NonMaxSuppression`` for the TorchScript exporter (once per process)."""
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


def check_options(info: ModelInfo, opts: ExportOptions) -> None:
    """Raise ``ExportError`` for options the model or the exporter cannot take (before any tracing)."""
    if opts.imgsz <= 0 or opts.imgsz % info.stride:
        raise ExportError(f"--image_size {opts.imgsz} is not a multiple of the model's largest stride {info.stride}")
    if opts.exporter not in ("torchscript", "dynamo"):
        raise ExportError(f"unknown exporter {opts.exporter!r} (torchscript or dynamo)")
    if opts.exporter == "dynamo" and opts.opset < DYNAMO_MIN_OPSET:
        raise ExportError(f"the dynamo exporter writes opset >= {DYNAMO_MIN_OPSET}; got --opset {opts.opset}")
    if not MIN_OPSET <= opts.opset <= 21:
        raise ExportError(f"--opset must be in {MIN_OPSET}..21, got {opts.opset}")
    if opts.top_k < 1 or opts.max_det < 1:
        raise ExportError("--max-det and --top-k must be >= 1")
    if opts.batch < 1:
        raise ExportError("--batch must be >= 1")


def deploy_module(model: YOLOPose, info: ModelInfo, opts: ExportOptions) -> nn.Module:
    """What the file computes: ``DeployModel`` with the options' settings, or ``DecodedModel`` without NMS."""
    if not opts.nms:
        return DecodedModel(model, info.num_classes, opts.half).eval()
    return DeployModel(model, info.num_classes, opts.conf, opts.iou, opts.max_det, opts.top_k, opts.half).eval()


def batch_dim(opts: ExportOptions) -> int | str:
    """The exported batch dimension: the symbol ``"batch"`` with ``--dynamic``, else the fixed batch size."""
    return "batch" if opts.dynamic else opts.batch


def decoded_shape(model: YOLOPose, info: ModelInfo, opts: ExportOptions) -> list[int | str]:
    """``[B, N, 5 + C + 3K]``: the decoded predictions at the export size."""
    n = sum(model.num_anchors * (opts.imgsz // int(s)) ** 2 for s in model.strides)
    return [batch_dim(opts), n, 5 + info.num_classes + 3 * info.num_keypoints]


def export_onnx(model: YOLOPose, info: ModelInfo, opts: ExportOptions, module: nn.Module | None = None,
                extra_outputs: Sequence[tuple[str, list[int | str]]] = ()) -> Any:
    """Trace ``model`` (network + decode + selection, see ``deploy_module``) into an in-memory ``ModelProto``
    with the documented static output shapes and the yolopose metadata; nothing is written to disk.

    ``module`` replaces the traced module (its outputs: the contract's, then ``extra_outputs`` as
    ``(name, shape)``); the export check traces its own wrapper this way to also see the decoded predictions.
    """
    import onnx

    check_options(info, opts)
    module = deploy_module(model, info, opts) if module is None else module
    b = batch_dim(opts)
    if opts.nms:
        d, k = opts.max_det, info.num_keypoints
        outputs = list(zip(OUTPUT_NAMES, [[b], [b, d, 4], [b, d], [b, d], [b, d, k, 3]]))
    else:
        outputs = [(RAW_OUTPUT_NAME, decoded_shape(model, info, opts))]
    outputs += list(extra_outputs)
    out_names = [name for name, _ in outputs]
    # dynamo specialises a batch of 1 to a constant: trace a dynamic batch at 2
    example = torch.rand(2 if opts.dynamic else opts.batch, 3, opts.imgsz, opts.imgsz)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if opts.exporter == "dynamo":
                shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if opts.dynamic else None
                torch.onnx.export(module, (example,), str(path), dynamo=True, external_data=False,
                                  opset_version=opts.opset, input_names=[INPUT_NAME], output_names=out_names,
                                  dynamic_shapes=shapes, custom_translation_table=_nms_translation_table(),
                                  verbose=False)
            else:
                register_nms_symbolic()
                axes = {n: {0: "batch"} for n in [INPUT_NAME, *out_names]} if opts.dynamic else None
                torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opts.opset,
                                  input_names=[INPUT_NAME], output_names=out_names, dynamic_axes=axes,
                                  do_constant_folding=True)
        proto = onnx.load(str(path))
    _set_output_shapes(proto, out_names, [shape for _, shape in outputs])
    if opts.dynamic:
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    proto.producer_name = "yolopose"
    del proto.metadata_props[:]
    for key, value in build_metadata(info, opts).items():
        proto.metadata_props.add(key=key, value=value)
    return proto


def partial_path(out: Path) -> Path:
    """The temporary name a file is written under before it is checked and moved to ``out``."""
    return out.with_name(f".{out.name}.partial")


def without_output(proto: Any, name: str) -> Any:
    """A copy of ``proto`` without the graph output ``name`` (nodes untouched)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    keep = [o for o in copy.graph.output if o.name != name]
    del copy.graph.output[:]
    copy.graph.output.extend(keep)
    return copy


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

