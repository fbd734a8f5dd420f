"""Deployment: the deploy wrapper (decode + NMS, static outputs), ONNX export and its check, TensorRT.

The exported graph (see ``OUTPUT_CONTRACT``) takes ``images (B, 3, S, S)`` float in [0, 1] (RGB,
letterboxed, no normalisation) and runs the network, ``geometry.decode`` and ``postprocess.select_detections``
- the same code as validation - with the NMS as the standard ONNX ``NonMaxSuppression`` operator. Every
output has a static shape except the batch dimension (symbolic with ``--dynamic``).

Modules: ``contract`` (names, shapes, metadata, settings, errors), ``wrapper`` (``DecodedModel``,
``DeployModel``), ``onnx_graph`` (tracing, graph inspection), ``verify`` (onnxruntime vs PyTorch),
``pipeline`` (``export_model``: trace, check, write), ``tensorrt``. The command line is ``export.cli``.
"""
from yolopose.export.contract import (DEFAULT_OPSET, DEPLOY_DEFAULTS, DYNAMO_MIN_OPSET, INPUT_NAME,
                                      METADATA_FORMAT, MIN_OPSET, OUTPUT_CONTRACT, OUTPUT_NAMES, RAW_OUTPUT_NAME,
                                      TENSORRT_OPS, DeploySettings, ExportError, ExportOptions, ModelInfo,
                                      TensorRTUnavailable, VerificationError, build_metadata, read_metadata)
from yolopose.export.onnx_graph import (export_onnx, graph_op_types, nms_thresholds, register_nms_symbolic,
                                        set_nms_thresholds)
from yolopose.export.pipeline import ExportResult, export_model
from yolopose.export.tensorrt import build_engine, trtexec_command
from yolopose.export.verify import (CheckedDeploy, Tolerance, check_images, export_for_check, match_detections,
                                    tie_free, verify_onnx)
from yolopose.export.wrapper import DecodedModel, DeployModel, outputs_to_detections

__all__ = [
    "DEFAULT_OPSET", "DEPLOY_DEFAULTS", "DYNAMO_MIN_OPSET", "INPUT_NAME", "METADATA_FORMAT", "MIN_OPSET",
    "OUTPUT_CONTRACT", "OUTPUT_NAMES", "RAW_OUTPUT_NAME", "TENSORRT_OPS", "CheckedDeploy", "DecodedModel",
    "DeployModel", "DeploySettings", "ExportError", "ExportOptions", "ExportResult", "ModelInfo",
    "TensorRTUnavailable", "Tolerance", "VerificationError", "build_engine", "build_metadata", "check_images",
    "export_for_check", "export_model", "export_onnx", "graph_op_types", "match_detections", "nms_thresholds",
    "outputs_to_detections", "read_metadata", "register_nms_symbolic", "set_nms_thresholds", "tie_free",
    "trtexec_command", "verify_onnx",
]
