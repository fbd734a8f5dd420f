"""The check ``export.py`` runs before it keeps a graph: onnxruntime against PyTorch on the same input.

The graph checked is traced from ``CheckedDeploy`` (the deploy model plus its decoded predictions as one
more output); the file written is that graph without the extra output, and it must reproduce the
checked outputs exactly (``check_saved_file``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from yolopose.export.contract import INPUT_NAME, OUTPUT_NAMES, ExportOptions, ModelInfo, VerificationError
from yolopose.export.onnx_graph import decoded_shape, export_onnx, nms_thresholds, set_nms_thresholds
from yolopose.export.wrapper import DeployModel, outputs_to_detections
from yolopose.nn.model import YOLOPose
from yolopose.postprocess import Detections

DECODED = "decoded"  # the extra output of the checked graph


@dataclass
class Tolerance:
    """Largest allowed |runtime - PyTorch|, derived from what a user sees (see docs/deploy.md).

    Coordinates (boxes, keypoints): ``cell`` x the stride of the level the prediction comes from. A person
    predicted at stride s has an OKS scale of at least ~s/2 (the smallest anchor of a level is ~2.8 s and the
    assigner takes objects down to a quarter of it); with COCO's tightest sigma (0.025) a keypoint moved by
    d changes its OKS by at most 0.607 d / (0.05 x s/2) = 24 d / s. ``cell = 5e-4`` bounds that change to
    0.012, a quarter of the 0.05 step between COCO's OKS thresholds (a box IoU by < 5e-3). At 640 px
    that is 4e-3 px at stride 8 and 3.2e-2 px at stride 64. The fp32 kernel-order noise between
    runtimes stays well below it (measured by ``benchmarks/export_parity.py``; figures in docs/deploy.md).
    Coordinates are compared for the predictions that can become a detection: those scoring >= ``min_score``
    (validation's threshold, the lowest the project uses) in either runtime. Below it, predictions with huge
    raw outputs carry 10x more rounding noise and are never output at any threshold in use.
    Probabilities (all predictions): ``prob`` (a sigmoid moves by at most a quarter of its logit's error);
    two detections closer than that in score are a tie and may come in either order.
    Where a detection's level is unknown (end to end), coordinates are held to ``cell`` x the largest stride.
    """
    cell: float = 5e-4
    prob: float = 1e-4
    min_score: float = 1e-3

    def limit(self, strides: torch.Tensor) -> torch.Tensor:
        """Allowed coordinate difference in pixels for predictions of these level strides (any shape)."""
        return self.cell * strides

    def excess(self, got: torch.Tensor, ref: torch.Tensor, limit: torch.Tensor | float) -> float:
        """Largest ``|got - ref| / limit``: <= 1 means within tolerance (``limit`` broadcasts)."""
        if got.numel() == 0:
            return 0.0
        return float(((got - ref).abs() / limit).max())


@dataclass
class CheckReport:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    compared: int = 0  # detections compared one to one (all stages, all images)
    outputs: list = field(default_factory=list)  # onnxruntime's outputs at the graph's own threshold


def check_images(imgsz: int, batch: int, seed: int = 0) -> np.ndarray:
    """``(batch, 3, S, S)`` float32: generated scenes with people (``synthetic.scene_images``),
    letterboxed as inference does (``data.transforms.preprocess``)."""
    from yolopose.synthetic import scene_images
    from yolopose.data.transforms import preprocess

    images = scene_images(batch, imgsz, imgsz * 3 // 4, seed=seed)
    return np.stack([preprocess(im, imgsz)[0] for im in images]).astype(np.float32)


class CheckedDeploy(nn.Module):
    """The check's own wrapper: ``DeployModel``'s five outputs, then its decoded predictions
    ``(B, N, 5 + C + 3K)`` (what the first stage of ``verify_onnx`` compares)."""

    def __init__(self, deploy: DeployModel) -> None:
        super().__init__()
        self.deploy = deploy

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        decoded = self.deploy.decoded(images)
        return (*self.deploy.outputs(decoded), decoded)


def export_for_check(model: YOLOPose, info: ModelInfo, opts: ExportOptions) -> tuple[Any, DeployModel]:
    """The graph to check (``CheckedDeploy`` traced, outputs ``OUTPUT_NAMES + (decoded,)``) and the PyTorch
    ``DeployModel`` it is checked against."""
    deploy = DeployModel(model, info.num_classes, opts.conf, opts.iou, opts.max_det, opts.top_k, opts.half).eval()
    proto = export_onnx(model, info, opts, module=CheckedDeploy(deploy).eval(),
                        extra_outputs=[(DECODED, decoded_shape(model, info, opts))])
    return proto, deploy


def match_detections(a: Detections, b: Detections, tol: Tolerance, px: float) -> tuple[int, str | None]:
    """Compare two batches of detections one to one; ``(compared, first problem or None)``.

    Same count per image; each detection of ``a`` needs a counterpart in ``b`` with the same label, a score
    within ``tol.prob`` and boxes/keypoints within ``px`` pixels. Detections of equal score (within
    ``tol.prob``) may come in either order; they are paired by box.
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
            if max(box_err, kp_err) > px or kc_err > tol.prob:
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


def session(model: Any) -> Any:
    """An onnxruntime CPU session on a ``ModelProto`` or a path (at most 4 threads, no spin-waiting)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = min(4, torch.get_num_threads())
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # a check, not a benchmark
    so.log_severity_level = 3
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


@dataclass
class DecodedDiff:
    """Largest differences between two decoded prediction tensors: pixels, and in units of the stride.
    Coordinates count for the ``compared`` predictions that can become a detection (see ``Tolerance``)."""
    box_px: float
    kpt_px: float
    prob: float
    box_cells: float  # max |difference| / stride of the prediction's level
    kpt_cells: float
    compared: int  # predictions whose coordinates were compared
    total: int


def prediction_scores(decoded: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, N)`` the score ``select_detections`` ranks by: objectness (x the best class probability if C > 1)."""
    obj = decoded[..., 4]
    return obj if num_classes == 1 else obj * decoded[..., 5:5 + num_classes].max(-1).values


def decoded_diff(got: torch.Tensor, ref: torch.Tensor, strides: torch.Tensor, num_classes: int,
                 min_score: float = 0.0) -> DecodedDiff:
    """Compare decoded predictions ``(B, N, 4 + 1 + C + 3K)``; ``strides (N,)`` (``DecodedModel.strides``).

    Probabilities are compared everywhere; coordinates where either side scores >= ``min_score``.
    """
    c = num_classes
    diff = (got - ref).abs()
    b, n = diff.shape[:2]
    keep = (torch.maximum(prediction_scores(got, c), prediction_scores(ref, c)) >= min_score)[..., None]
    s = strides.to(diff.dtype).view(1, n, 1)
    box = diff[..., :4] * keep
    kpt = diff[..., 5 + c:].reshape(b, n, -1, 3)
    kxy = kpt[..., :2].reshape(b, n, -1) * keep
    empty = kxy.numel() == 0
    return DecodedDiff(float(box.max()), 0.0 if empty else float(kxy.max()),
                       max(float(diff[..., 4:5 + c].max()), 0.0 if empty else float(kpt[..., 2].max())),
                       float((box / s).max()), 0.0 if empty else float((kxy / s).max()), int(keep.sum()), b * n)


def check_decoded(got: torch.Tensor, ref: torch.Tensor, strides: torch.Tensor, num_classes: int, tol: Tolerance,
                  report: CheckReport, runtime: str = "onnxruntime") -> DecodedDiff:
    """Decoded predictions ``(B, N, 4 + 1 + C + 3K)``: coordinates within ``tol.cell`` x the level's stride
    (``strides (N,)``) wherever a side scores >= ``tol.min_score``, every probability within ``tol.prob``.

    Raises:
        VerificationError: outside the tolerance.
    """
    d = decoded_diff(got, ref, strides, num_classes, tol.min_score)
    report.lines.append(f"decoded predictions ({ref.shape[0]} x {ref.shape[1]}): max |{runtime} - PyTorch| "
                        f"box {d.box_px:.2e} px, keypoints {d.kpt_px:.2e} px ({max(d.box_cells, d.kpt_cells):.1e} "
                        f"x stride; tolerance {tol.cell:g} x stride) over the {d.compared} scoring >= "
                        f"{tol.min_score:g}, probabilities {d.prob:.2e} over all (tolerance {tol.prob:g})")
    if d.compared == 0:
        report.warnings.append(f"no prediction scores >= {tol.min_score:g} on the check images: coordinates "
                               "were not compared (an untrained model?)")
    if max(d.box_cells, d.kpt_cells) > tol.cell or d.prob > tol.prob:
        raise VerificationError(f"{runtime}'s decoded predictions differ from PyTorch's (box {d.box_px:.2e} px, "
                                f"keypoints {d.kpt_px:.2e} px = {max(d.box_cells, d.kpt_cells):.1e} x the level's "
                                f"stride, probabilities {d.prob:.2e}; tolerance {tol.cell:g} x stride, "
                                f"{tol.prob:g})")
    return d


def verify_onnx(proto: Any, wrapper: DeployModel, images: np.ndarray, tol: Tolerance = Tolerance(),
                low_conf: float = 0.001) -> CheckReport:
    """Run the checked graph (``export_for_check``: outputs plus ``decoded``) in onnxruntime against PyTorch.

    1. Network + decode, on ``images (B, 3, S, S)``: every decoded prediction within ``tol`` (coordinates
       ``tol.cell`` x its level's stride, probabilities ``tol.prob``).
    2. Selection (TopK + NonMaxSuppression + ranking): the graph's post-processing part (``decoded`` ->
       outputs, cut out of the same graph) against ``select_detections`` on one tie-free input (``tie_free``
       of the decoded predictions; most candidates pass the threshold): the detections must be identical.
    3. End to end on the images: graph vs the PyTorch ``DeployModel``, the same detections in the same order
       up to score ties, within ``tol`` (at the largest stride). When the graph's threshold leaves no
       detection, this is repeated with the threshold lowered to ``low_conf``.

    Raises:
        VerificationError: 1 or 2 fails. Given 1 and 2, a difference in 3 can only come from exactly tied
            scores or float rounding deciding a threshold, and is reported as a warning.
    """
    import onnx.utils

    report = CheckReport()
    size = images.shape[-1]
    strides = wrapper.decoder.strides(size)
    px = tol.cell * float(strides.max())
    with torch.no_grad():
        ref_decoded = wrapper.decoded(torch.from_numpy(images))
    outs = session(proto).run(None, {INPUT_NAME: images})
    report.outputs = outs[:len(OUTPUT_NAMES)]
    ort_decoded = torch.from_numpy(outs[-1])
    c = wrapper.num_classes
    # 1. network + decode
    check_decoded(ort_decoded, ref_decoded, strides, c, tol, report)
    # 2. selection, on one input for both
    conf, _ = nms_thresholds(proto)
    # the part of the graph after ``decoded``; it may read the batch size off ``images`` (dynamo does)
    post = onnx.utils.Extractor(proto).extract_model([INPUT_NAME, DECODED], list(OUTPUT_NAMES))
    synthetic = tie_free(ort_decoded)
    feed = {INPUT_NAME: images, DECODED: synthetic.numpy()}
    feed = {i.name: feed[i.name] for i in post.graph.input}
    got = outputs_to_detections(session(post).run(None, feed))
    with torch.no_grad():
        ref = wrapper.select(synthetic, conf)
    n2, problem = match_detections(got, ref, Tolerance(prob=1e-6), px=1e-5)
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
        n3, problem = match_detections(got, ref, tol, px)
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
                                f"(same order up to score ties; boxes and keypoints within {px:.2g} px, scores "
                                f"within {tol.prob:g})")
        report.compared += n3
        return total

    if end_to_end(outs, conf) == 0 and conf > low_conf:
        report.lines.append(f"conf {conf:g} leaves no detection on the check images: repeating at conf {low_conf:g} "
                            "(the graph's threshold lowered in a copy)")
        end_to_end(session(set_nms_thresholds(proto, conf=low_conf)).run(None, {INPUT_NAME: images}), low_conf)
    if report.compared == n2:
        report.warnings.append("end to end, the check compared 0 detections (no score above the threshold on the "
                               "check images)")
    return report


def check_saved_file(path: Path, report: CheckReport, images: np.ndarray) -> None:
    """The written file must give exactly what the verified in-memory graph gave (minus ``decoded``)."""
    got = session(path).run(None, {INPUT_NAME: images})
    for name, x, y in zip(OUTPUT_NAMES, got, report.outputs):
        if x.shape != y.shape or not np.array_equal(x, y):
            raise VerificationError(f"{path}: output {name} differs from the verified graph's")
