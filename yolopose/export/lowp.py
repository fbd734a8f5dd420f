"""Lower-precision ONNX files: INT8 (post-training static quantisation with NNCF) and what it costs.

``quantize_int8(proto, calibration)`` inserts QuantizeLinear/DequantizeLinear pairs (QDQ) into the network part of
an exported graph with NNCF (``nncf.quantize``: per-channel symmetric int8 weights, int8 activations calibrated on
the given images, fast bias correction). Decode and NMS, and the head's final prediction convs, stay FP32: the
raw offsets they produce are multiplied by the stride, and quantising them cost the most AP in the measurements
(docs/deploy.md). The file keeps the FP32 graph's inputs, outputs and metadata, so ``predict.py``, the Python API,
onnxruntime, OpenVINO and TensorRT's explicit quantisation all run it unchanged.

Why NNCF and not ``onnxruntime.quantization.quantize_static``: on the demo model the same calibration images gave
kpt AP 0.132 (FP32) -> 0.126 (NNCF, every conv) / 0.128 (NNCF, head kept FP32) against 0.033 (onnxruntime, every
conv, MinMax) / 0.101 (onnxruntime, head kept FP32); see docs/deploy.md.

``score_file`` and ``latency_ms`` measure a file on a validation set and on one image: export uses them to say
what the lower precision cost (``LowPrecisionReport``) and to refuse a file that lost too much.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from yolopose.export.contract import INPUT_NAME, ExportError

NETWORK_PARTS = ("/backbone/", "/neck/", "/head/")
"""Node names of the traced network contain one of these (``YOLOPose``'s submodules); the other nodes of an exported
graph are decode and NMS."""

DEFAULT_MAX_AP_DROP = 0.02
"""Default ``--max-ap-drop``: a good INT8 calibration cost 0.004-0.006 kpt AP on the demo model, a broken one
0.03-0.1 (docs/deploy.md), so 0.02 keeps the first with a margin and refuses the second."""


def fp32_nodes(proto: Any, keep_head: bool = True) -> list[str]:
    """Names of the nodes that stay FP32: everything outside the network (decode, NMS) and, with ``keep_head``, the
    head's final prediction convs."""
    names = []
    for node in proto.graph.node:
        outside = not any(part in node.name for part in NETWORK_PARTS)
        head_conv = keep_head and node.op_type == "Conv" and "/head/" in node.name
        if outside or head_conv:
            names.append(node.name)
    if len(names) == len(proto.graph.node):
        raise ExportError(f"no network nodes (names with {' or '.join(NETWORK_PARTS)}) in the graph: nothing to "
                          "quantise")
    return names


def quantize_int8(proto: Any, calibration: np.ndarray, keep_head: bool = True) -> Any:
    """The INT8 QDQ version of an exported FP32 graph ``proto``.

    Args:
        proto: the FP32 ``onnx.ModelProto`` (from ``export_model``).
        calibration: ``(N, 3, S, S)`` float32 network inputs (letterboxed as in inference); fed one at a time,
            repeated to the graph's static batch size if it has one.
        keep_head: keep the head's final prediction convs in FP32.

    Raises:
        ExportError: NNCF is not installed, or no calibration images.
    """
    try:
        import nncf
        # Its per-node INFO lines are not the user's business. Not nncf.set_log_level: that also sets the level of every
        # handler on its logger, including ones others attached there (pytest's log capture was left at ERROR).
        logging.getLogger("nncf").setLevel(logging.ERROR)
    except ImportError:
        raise ExportError("--int8 needs NNCF (Apache-2.0, OpenVINO's quantisation tool): pip install "
                          "'yolopose[int8]'") from None
    if not len(calibration):
        raise ExportError("--int8: no calibration images")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims[0].HasField("dim_value") else 1
    samples = [np.repeat(calibration[i:i + 1], batch, 0).astype(np.float32) for i in range(len(calibration))]
    quantized = nncf.quantize(proto, nncf.Dataset(samples, lambda x: {INPUT_NAME: x}), subset_size=len(samples),
                              ignored_scope=nncf.IgnoredScope(names=fp32_nodes(proto, keep_head), validate=False),
                              fast_bias_correction=True)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(proto.metadata_props)
    return activations_to_uint8(quantized)


def activations_to_uint8(proto: Any) -> Any:
    """The same quantised graph with every int8 activation QuantizeLinear/DequantizeLinear pair moved to uint8
    (zero point + 128: exactly the same values). OpenVINO's CPU plugin ran signed-int8 activations of this model
    wrongly (kpt AP 0.13 -> 0.01 where onnxruntime kept 0.128) and unsigned ones right (docs/deploy.md)."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    added, moved = {}, set()
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or len(node.input) < 3:
            continue
        zp = inits.get(node.input[2])
        if zp is None or numpy_helper.to_array(zp).dtype != np.int8:
            continue
        name = f"{node.input[2]}_u8"
        if name not in added:
            value = numpy_helper.to_array(zp).astype(np.int16) + 128
            added[name] = numpy_helper.from_array(value.astype(np.uint8), name)
        node.input[2] = name
        moved.add(node.output[0])
        for dq in consumers.get(node.output[0], []):
            if dq.op_type == "DequantizeLinear" and len(dq.input) > 2:
                dq.input[2] = name
    proto.graph.initializer.extend(added.values())
    for info in proto.graph.value_info:
        if info.name in moved:
            info.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    return proto


@dataclass
class LowPrecisionReport:
    """What a lower precision cost, measured on the same images and machine (None: not measured)."""
    precision: str
    kpt_ap_fp32: float | None = None
    kpt_ap: float | None = None
    box_ap_fp32: float | None = None
    box_ap: float | None = None
    images: int = 0
    ms_fp32: float | None = None
    ms: float | None = None
    runtime: str = "onnxruntime"

    @property
    def kpt_drop(self) -> float | None:
        return None if self.kpt_ap is None or self.kpt_ap_fp32 is None else self.kpt_ap_fp32 - self.kpt_ap

    def lines(self) -> list[str]:
        """Human-readable summary lines (``kpt AP 0.132 -> 0.128 (-0.004)``)."""
        out = []
        if self.kpt_ap is not None:
            out.append(f"{self.precision} vs fp32 on {self.images} validation images: kpt AP {self.kpt_ap_fp32:.3f} -> "
                       f"{self.kpt_ap:.3f} ({-self.kpt_drop:+.3f}), box AP {self.box_ap_fp32:.3f} -> {self.box_ap:.3f} "
                       f"({self.box_ap - self.box_ap_fp32:+.3f})")
        else:
            out.append(f"{self.precision}: no validation set, so what it costs in AP was NOT checked (give "
                       "--val-ann and --val-images, or export a checkpoint whose run folder holds its config.yaml)")
        if self.ms is not None:
            out.append(f"{self.runtime} latency, batch 1 (decode + NMS included): fp32 {self.ms_fp32:.1f} ms -> "
                       f"{self.precision} {self.ms:.1f} ms ({self.ms_fp32 / self.ms:.2f}x)")
        return out

    def metadata(self) -> dict[str, str]:
        return {"precision": self.precision, "precision_cost": json.dumps(asdict(self))}


def score_file(path: str | Path, images: Sequence[tuple[int, np.ndarray]], gt: dict, sigmas: Sequence[float],
               runtime: str = "onnxruntime", threads: int | None = None) -> dict[str, float]:
    """pycocotools kpt/box AP of an exported file on ``images`` (``(image_id, RGB uint8)``) against ``gt``, at
    validation's threshold (conf 0.001)."""
    from yolopose.data.transforms import preprocess
    from yolopose.evaluation import CocoEvaluator, detections_to_records
    from yolopose.inference import load_predictor

    predictor = load_predictor(path, conf=0.001, threads=threads, runtime=runtime)
    records: list[dict] = []
    for image_id, image in images:
        x, meta = preprocess(image, predictor.imgsz, image_id)
        records += detections_to_records(predictor.run(x[None]).image(0), meta, predictor.info.category_ids)
    return CocoEvaluator(gt, list(sigmas)).evaluate(records, {i for i, _ in images})


def latency_ms(path: str | Path, image: np.ndarray, runtime: str = "onnxruntime", threads: int | None = None,
               runs: int = 10) -> float:
    """Median milliseconds of one ``(1, 3, S, S)`` input through the file (decode + NMS included)."""
    from yolopose.inference import load_predictor

    predictor = load_predictor(path, threads=threads, runtime=runtime)
    for _ in range(2):
        predictor.run(image)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        predictor.run(image)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))
