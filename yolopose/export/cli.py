"""``python export.py``: export, check, optionally build a TensorRT engine; one-line errors."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

import numpy as np

from yolopose.export.contract import (DEFAULT_OPSET, DEPLOY_DEFAULTS, DYNAMO_MIN_OPSET, RAW_OUTPUT_NAME,
                                      ExportError, ExportOptions, TensorRTUnavailable)
from yolopose.export.lowp import DEFAULT_MAX_AP_DROP
from yolopose.export.pipeline import export_model
from yolopose.export.tensorrt import build_engine

FALLBACK_IMAGE_SIZE = 640  # for a checkpoint that does not record the size it was trained at


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message as one line (the first line of a multi-line message, capped at ``limit``)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    if len(lines) > 1 and text.count("(") > text.count(")"):
        text = text.rstrip(" .:") + " ...)"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``export.py``'s command line (``--weights`` / ``--image_size``; ``--ckpt`` / ``--imgsz`` are aliases)."""
    d = DEPLOY_DEFAULTS
    p = argparse.ArgumentParser(
        prog="export.py", description="Export a yolopose checkpoint to ONNX (decode + NMS inside, static outputs), "
        "check it against PyTorch with onnxruntime, optionally build a TensorRT engine.")
    p.add_argument("--weights", "--ckpt", dest="weights", required=True,
                   help="yolopose checkpoint (.ckpt) written by train.py (--ckpt: the same)")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--image_size", "--imgsz", dest="image_size", type=int, default=None,
                   help="square input size, a multiple of the largest stride (default: the size the checkpoint "
                   f"was trained at, else {FALLBACK_IMAGE_SIZE}; --imgsz: the same)")
    p.add_argument("--opset", type=int, default=None,
                   help=f"ONNX opset (default {DEFAULT_OPSET}; {DYNAMO_MIN_OPSET} with --exporter dynamo)")
    p.add_argument("--dynamic", action="store_true", help="symbolic batch dimension")
    p.add_argument("--batch", type=int, default=1,
                   help="static batch size; with --dynamic the TensorRT profile's maximum batch")
    p.add_argument("--no-nms", dest="nms", action="store_false",
                   help=f"output the raw decoded predictions '{RAW_OUTPUT_NAME}' (B, N, 5+C+3K) instead")
    p.add_argument("--conf", type=float, default=d.conf, help="confidence threshold baked into the graph")
    p.add_argument("--iou", type=float, default=d.iou, help="NMS IoU threshold baked into the graph")
    p.add_argument("--max-det", type=int, default=d.max_det, help="detections per image (static output size D)")
    p.add_argument("--top-k", type=int, default=d.top_k,
                   help="candidates entering NMS per image (TensorRT's NMS takes at most a few thousand)")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    p.add_argument("--check-image", default=None,
                   help="image for the onnxruntime check (default: generated scenes with people)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the onnxruntime check")
    p.add_argument("--engine", action="store_true", help="also build a TensorRT engine (next to --out, .engine)")
    p.add_argument("--fp16", action="store_true", help="FP16 TensorRT engine (the ONNX file stays FP32)")
    p.add_argument("--int8", action="store_true",
                   help="INT8 ONNX (QDQ, calibrated with NNCF; decode, NMS and the final head convs stay FP32), scored "
                   "against FP32 on the validation set; with --engine an INT8 TensorRT engine from it")
    p.add_argument("--half", action="store_true", help="FP16 ONNX for GPU runtimes (inputs, outputs, decode and NMS "
                   "stay FP32)")
    p.add_argument("--calib", default=None, help="--int8: folder of calibration images (default: the run's "
                   "training images)")
    p.add_argument("--calib-images", type=int, default=300, help="--int8: calibration images (default 300)")
    p.add_argument("--val-ann", default=None, help="--int8/--half: COCO keypoints JSON to score FP32 vs the lower "
                   "precision on (default: the run's validation split, from its config.yaml)")
    p.add_argument("--val-images", default=None, help="image folder of --val-ann")
    p.add_argument("--val-limit", type=int, default=500, help="--int8/--half: validation images scored (0: all)")
    p.add_argument("--max-ap-drop", type=float, default=DEFAULT_MAX_AP_DROP,
                   help=f"--int8/--half: refuse the file when kpt AP drops by more (default {DEFAULT_MAX_AP_DROP})")
    p.add_argument("--workspace", type=float, default=4.0, help="TensorRT builder workspace in GiB")
    a = p.parse_args(argv)
    if a.opset is None:
        a.opset = DYNAMO_MIN_OPSET if a.exporter == "dynamo" else DEFAULT_OPSET
    return a


def run(a: argparse.Namespace) -> int:
    """Export (and check) what ``a`` asks for; returns the exit code."""
    from yolopose.restore import load_deployable

    if a.fp16 and not a.engine:
        raise ExportError("--fp16 sets the TensorRT engine's precision: use it with --engine "
                          "(the ONNX graph is exported in FP32)")
    if sum((a.int8, a.half, a.fp16)) > 1:
        raise ExportError("choose one precision: --int8, --half (an FP16 ONNX) or --fp16 (an FP16 TensorRT engine)")
    if (a.int8 or a.half) and not a.nms:
        raise ExportError("--int8 and --half export the deployable graph (decode + NMS inside): drop --no-nms")
    model, info = load_deployable(a.weights)
    size = a.image_size or info.image_size
    if size is None:
        size = FALLBACK_IMAGE_SIZE
        print(f"note: {a.weights} does not record the size it was trained at; exporting at {size} "
              "(set --image_size)")
    opts = ExportOptions(imgsz=size, opset=a.opset, dynamic=a.dynamic, batch=a.batch, nms=a.nms, conf=a.conf,
                         iou=a.iou, max_det=a.max_det, top_k=a.top_k, exporter=a.exporter)
    if a.int8 or a.half:
        from yolopose.export.lowp_export import export_low_precision

        result = export_low_precision(model, info, a, opts)
        for line in result.notes:
            print(line)
        if a.engine:
            engine = build_engine(result.path, result.path.with_suffix(".engine"), False, size, a.dynamic, a.batch,
                                  a.workspace, int8=a.int8)
            print(f"wrote {engine} (TensorRT, {'INT8, explicit quantisation' if a.int8 else 'FP16 weights'})")
        return 0
    images = None
    if a.check and a.check_image:
        from yolopose.data.image_io import read_image
        from yolopose.data.transforms import preprocess

        one = preprocess(read_image(a.check_image), size)[0]
        images = np.stack([one] * (2 if a.dynamic else a.batch)).astype(np.float32)
    result = export_model(model, info, a.out, opts, check=a.check, images=images)
    print(f"wrote {result.path} ({result.size_mb:.1f} MB, opset {opts.opset}, {opts.exporter} exporter, "
          f"image size {size}, act {info.act}, K={info.num_keypoints}, C={info.num_classes}); onnx.checker: ok")
    if result.report is not None:
        for line in result.report.lines:
            print(f"check: {line}")
        for line in result.report.warnings:
            print(f"check: WARNING: {line}")
    for line in result.notes:
        print(f"check: {line}")
    if a.engine:
        engine = build_engine(result.path, result.path.with_suffix(".engine"), a.fp16, size, a.dynamic, a.batch,
                              a.workspace)
        print(f"wrote {engine} (TensorRT{', FP16' if a.fp16 else ''})")
    return 0


EXPORT_PACKAGES = ("onnx", "onnxruntime")
"""What every export needs (the ``export`` extra; ``onnxscript`` only for ``--exporter dynamo``)."""


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 on success; a one-line ``error:`` on stderr and 1 on failure (3: TensorRT missing)."""
    from yolopose.checkpoint import CheckpointError
    from yolopose.data.image_io import ImageReadError

    a = parse_args(argv)
    missing = [name for name in EXPORT_PACKAGES if not _importable(name)]
    if missing:  # a plain `pip install yolopose` has no exporter: say so in one line, not an ImportError traceback
        print(f"error: export needs {', '.join(missing)}: pip install 'yolopose[export]'", file=sys.stderr)
        return 2
    try:
        return run(a)
    except TensorRTUnavailable as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 3
    except (CheckpointError, ExportError, ImageReadError) as exc:
        print(f"error: {one_line(exc)}" + (f"; {a.out} not written" if not isinstance(exc, CheckpointError) else ""),
              file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - onnx checker / exporter failures: one line, not a traceback
        import onnx

        if isinstance(exc, (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)):
            print(f"error: onnx.checker rejected {a.out}: {str(exc).splitlines()[0]}; {a.out} not written",
                  file=sys.stderr)
            return 1
        raise
