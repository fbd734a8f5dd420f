"""Export as one step: trace, check, and only then put the file in place (``export_model``)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from yolopose.export.contract import INPUT_NAME, ExportOptions, ModelInfo
from yolopose.export.onnx_graph import export_onnx, partial_path, without_output
from yolopose.export.verify import (DECODED, CheckReport, Tolerance, check_decoded, check_images,
                                    check_saved_file, export_for_check, session, verify_onnx)
from yolopose.export.wrapper import DecodedModel
from yolopose.nn.model import YOLOPose


@dataclass
class ExportResult:
    path: Path
    size_mb: float
    report: CheckReport | None = None  # None: exported with check=False
    notes: list[str] = field(default_factory=list)


def export_model(model: YOLOPose, info: ModelInfo, out: str | Path, opts: ExportOptions, check: bool = True,
                 images: np.ndarray | None = None, tol: Tolerance = Tolerance()) -> ExportResult:
    """Export ``model`` to ``out`` (ONNX, decode + NMS inside unless ``opts.nms`` is off) and check it.

    The graph is written under a temporary name beside ``out`` (``onnx_graph.partial_path``), passed through
    ``onnx.checker`` and, with ``check``, compared with PyTorch in onnxruntime (``verify.verify_onnx``) on
    ``images (B, 3, S, S)`` (default: ``check_images``, batch 2 for a dynamic batch); only then is it renamed
    to ``out``. On any failure the temporary file is removed and ``out`` is left as it was.

    Raises:
        ExportError: bad options; VerificationError: the check failed; onnx.checker.ValidationError.
    """
    import onnx

    out = Path(out)
    model = model.float().eval()
    batch = 2 if opts.dynamic else opts.batch
    if check and images is None:
        images = check_images(opts.imgsz, batch)
    report: CheckReport | None = None
    if check and opts.nms:
        proto, deploy = export_for_check(model, info, opts)
        report = verify_onnx(proto, deploy, images, tol)
        final = without_output(proto, DECODED)
    else:
        final = export_onnx(model, info, opts)
        if check:
            report = CheckReport()
            decoder = DecodedModel(model, info.num_classes).eval()
            with torch.no_grad():
                ref = decoder(torch.from_numpy(images))
            got = torch.from_numpy(session(final).run(None, {INPUT_NAME: images})[0])
            check_decoded(got, ref, decoder.strides(opts.imgsz), info.num_classes, tol, report)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(out)
    try:
        onnx.save(final, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        if report is not None and opts.nms:
            check_saved_file(tmp, report, images)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    result = ExportResult(out, out.stat().st_size / 1e6, report)
    if check and opts.dynamic:
        result.notes.append("ran at batch 2 (batch dimension symbolic)")
    return result
