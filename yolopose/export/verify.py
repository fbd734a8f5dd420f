"""The check ``export.py`` runs after writing a graph: onnxruntime against PyTorch on the same input."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yolopose.export.contract import INPUT_NAME, OUTPUT_NAMES, VerificationError
from yolopose.export.onnx_graph import nms_thresholds, set_nms_thresholds
from yolopose.export.wrapper import DeployModel, outputs_to_detections
from yolopose.postprocess import Detections


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
    from yolopose.predict import preprocess
    from yolopose.synthetic import scene_images

    out = [preprocess(rgb, imgsz)[0] for rgb in scene_images(batch, imgsz, imgsz * 3 // 4, seed)]
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


def session(model: Any) -> Any:
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
    outs = session(proto).run(None, {INPUT_NAME: images})
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
    got = outputs_to_detections(session(post).run(None, feed))
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

