"""``export.py --int8`` / ``--half``: the FP32 export and its check, the lower-precision file from it, and what the
lower precision costs in AP and speed, written into the file's metadata; a file that lost too much is not kept."""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from yolopose.data.transforms import preprocess
from yolopose.export.checkdata import CheckData, check_data
from yolopose.export.contract import ExportError, ExportOptions, ModelInfo
from yolopose.export.lowp import LowPrecisionReport, latency_ms, quantize_int8, score_file
from yolopose.export.onnx_graph import partial_path
from yolopose.export.pipeline import export_model
from yolopose.export.verify import Tolerance
from yolopose.nn.model import YOLOPose

FP16_TOLERANCE = Tolerance(cell=2e-2, prob=3e-2)
"""The check of an FP16 graph against the same FP16 network in PyTorch: float16 keeps ~3 decimal digits, so raw
outputs differ by ~1e-2 between kernels (measured on the demo model: coordinates 6e-3 x stride, probabilities
1.1e-2): 40x the FP32 coordinate tolerance, 300x its probability tolerance."""


@dataclass
class LowPrecisionResult:
    path: Path
    report: LowPrecisionReport
    notes: list[str] = field(default_factory=list)


def _openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _timing_input(data: CheckData, opts: ExportOptions) -> np.ndarray | None:
    """One network input (a calibration image, else a validation image), at the file's batch size."""
    if data.calibration.shape[0]:
        image = data.calibration[:1]
    elif data.val_images:
        image = preprocess(data.val_images[0][1], opts.imgsz)[0][None]
    else:
        return None
    return image.repeat(1 if opts.dynamic else opts.batch, 0)


def export_low_precision(model: YOLOPose, info: ModelInfo, a: argparse.Namespace,
                         opts: ExportOptions) -> LowPrecisionResult:
    """Write ``a.out`` in ``int8`` or ``fp16`` (see the module docstring).

    Raises:
        ExportError: no calibration images for ``--int8``, or kpt AP dropped by more than ``a.max_ap_drop``.
    """
    import onnx

    precision = "int8" if a.int8 else "fp16"
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = check_data(a.weights, opts.imgsz, a.calib, a.calib_images if a.int8 else 0, a.val_ann, a.val_images,
                      a.val_limit or None, need_calibration=a.int8)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}-", dir=out.parent))
    try:
        fp32 = export_model(copy.deepcopy(model), info, tmp / "fp32.onnx", opts, check=a.check)
        notes = [f"fp32 reference: {line}" for line in (fp32.report.lines if fp32.report else [])]
        low = tmp / f"{precision}.onnx"
        if a.int8:
            onnx.save(quantize_int8(onnx.load(str(fp32.path)), data.calibration), str(low))
            notes.append(f"int8: calibrated on {data.calibration_source} (NNCF, per-channel int8 weights, uint8 "
                         "activations; decode, NMS and the final head convs FP32)")
        else:
            half = export_model(copy.deepcopy(model), info, low, replace(opts, half=True), check=a.check,
                                tol=FP16_TOLERANCE)
            notes += [f"fp16 check: {line}" for line in (half.report.lines if half.report else [])]
        report = LowPrecisionReport(precision, images=len(data.val_images))
        if data.gt is not None:
            for runtime in ("onnxruntime",) + (("openvino",) if a.int8 and _openvino() else ()):
                ref, got = (score_file(p, data.val_images, data.gt, info.sigmas, runtime) for p in (fp32.path, low))
                if runtime == "onnxruntime":
                    report.kpt_ap_fp32, report.kpt_ap = ref["kpt_AP"], got["kpt_AP"]
                    report.box_ap_fp32, report.box_ap = ref["box_AP"], got["box_AP"]
                else:
                    notes.append(f"openvino: kpt AP {ref['kpt_AP']:.3f} -> {got['kpt_AP']:.3f}, box AP "
                                 f"{ref['box_AP']:.3f} -> {got['box_AP']:.3f} (the same file)")
        image = _timing_input(data, opts)
        if image is not None:
            report.ms_fp32, report.ms = (latency_ms(p, image) for p in (fp32.path, low))
        notes = report.lines() + notes
        drop = report.kpt_drop
        if drop is not None and drop > a.max_ap_drop:
            raise ExportError(
                f"{precision} lost {drop:.3f} kpt AP ({report.kpt_ap_fp32:.3f} -> {report.kpt_ap:.3f}) on "
                f"{report.images} validation images, more than --max-ap-drop {a.max_ap_drop}: not kept. Try more or "
                "more typical calibration images (--calib, --calib-images), a model trained with --model.act relu "
                "(it quantises better), or --half / FP32")
        proto = onnx.load(str(low))
        meta = {p.key: p.value for p in proto.metadata_props}
        meta.update(report.metadata())
        if a.int8:
            meta["calibration"] = json.dumps({"tool": "nncf", "images": int(data.calibration.shape[0]),
                                              "source": data.calibration_source,
                                              "fp32": "decode, NMS, head prediction convs"})
        del proto.metadata_props[:]
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        part = partial_path(out)
        onnx.save(proto, str(part))
        os.replace(part, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    notes.insert(0, f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {precision}, image size {opts.imgsz}, "
                    f"K={info.num_keypoints}, C={info.num_classes})")
    return LowPrecisionResult(out, report, notes)
