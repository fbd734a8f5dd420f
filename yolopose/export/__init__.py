"""Deployment: the deploy wrapper (decode + NMS, static outputs), ONNX export and its check, TensorRT.

    python export.py --ckpt CKPT --out model.onnx [--imgsz 640] [--dynamic] [--no-nms] [--engine [--fp16]]

The exported graph (see ``OUTPUT_CONTRACT``) takes ``images (B, 3, S, S)`` float in [0, 1] (RGB,
letterboxed, no normalisation) and runs the network, ``geometry.decode`` and ``postprocess.select_detections``
- the same code as validation - with the NMS as the standard ONNX ``NonMaxSuppression`` operator. Every
output has a static shape except the batch dimension (symbolic with ``--dynamic``).

Modules: ``contract`` (names, shapes, metadata, errors), ``wrapper`` (``DeployModel``), ``onnx_graph``
(export, graph inspection), ``verify`` (onnxruntime vs PyTorch), ``tensorrt``, ``cli``.
"""
from yolopose.export.cli import main, one_line
from yolopose.export.contract import (DEFAULT_OPSET, DYNAMO_MIN_OPSET, INPUT_NAME, METADATA_FORMAT, MIN_OPSET,
                                      OUTPUT_CONTRACT, OUTPUT_NAMES, RAW_OUTPUT_NAME, TENSORRT_OPS, ExportError,
                                      ExportOptions, ModelInfo, TensorRTUnavailable, VerificationError,
                                      build_metadata, read_metadata)
from yolopose.export.onnx_graph import (export_onnx, graph_op_types, nms_thresholds, register_nms_symbolic,
                                        set_nms_thresholds)
from yolopose.export.tensorrt import build_engine, trtexec_command
from yolopose.export.verify import Tolerance, check_images, tie_free, verify_onnx
from yolopose.export.wrapper import DeployModel, outputs_to_detections

__all__ = [
    "DEFAULT_OPSET", "DYNAMO_MIN_OPSET", "INPUT_NAME", "METADATA_FORMAT", "MIN_OPSET", "OUTPUT_CONTRACT",
    "OUTPUT_NAMES", "RAW_OUTPUT_NAME", "TENSORRT_OPS", "DeployModel", "ExportError", "ExportOptions", "ModelInfo",
    "TensorRTUnavailable", "Tolerance", "VerificationError", "build_engine", "build_metadata", "check_images",
    "export_onnx", "graph_op_types", "main", "nms_thresholds", "one_line", "outputs_to_detections",
    "read_metadata", "register_nms_symbolic", "set_nms_thresholds", "tie_free", "trtexec_command", "verify_onnx",
]
