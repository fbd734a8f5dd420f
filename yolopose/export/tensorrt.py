"""TensorRT: build an engine with the ``tensorrt`` Python API, or say which ``trtexec`` command would."""
from __future__ import annotations

import logging
from pathlib import Path

from yolopose.export.contract import INPUT_NAME, ExportError, TensorRTUnavailable

log = logging.getLogger("yolopose.export")


def trtexec_command(onnx_path: str | Path, engine_path: str | Path, fp16: bool, imgsz: int, dynamic: bool,
                    batch: int, int8: bool = False) -> str:
    """The ``trtexec`` command line that builds the same engine as ``build_engine``."""
    cmd = f"trtexec --onnx={onnx_path} --saveEngine={engine_path}"
    if dynamic:
        cmd += (f" --minShapes={INPUT_NAME}:1x3x{imgsz}x{imgsz} --optShapes={INPUT_NAME}:{batch}x3x{imgsz}x{imgsz}"
                f" --maxShapes={INPUT_NAME}:{batch}x3x{imgsz}x{imgsz}")
    return cmd + (" --fp16" if fp16 else "") + (" --int8" if int8 else "")


def build_engine(onnx_path: str | Path, engine_path: str | Path, fp16: bool = False, imgsz: int = 640,
                 dynamic: bool = False, batch: int = 1, workspace_gb: float = 4.0, int8: bool = False) -> Path:
    """Build a serialized TensorRT engine from the ONNX file with the ``tensorrt`` Python API.

    ``int8``: the file is an INT8 QDQ graph (``export.py --int8``): explicit quantisation, its scales are the ones
    the QDQ nodes hold (no TensorRT calibrator); FP16 is allowed too for the layers left in float.

    Raises:
        TensorRTUnavailable: ``tensorrt`` does not import (the message holds the ``trtexec`` command).
        ExportError: the parser or the builder failed.
    """
    hint = trtexec_command(onnx_path, engine_path, fp16, imgsz, dynamic, batch, int8)
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
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
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

