"""``DeployModel``: network + decode + detection selection with static outputs, what the graph computes."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from yolopose.geometry import decode
from yolopose.nn.model import YOLOPose
from yolopose.postprocess import Detections, select_detections


class DeployModel(nn.Module):
    """Network + decode + detection selection with static-shaped outputs: what the ONNX graph computes.

    Args:
        model: the network (``PoseModule.inference_model``).
        num_classes: C.
        conf, iou, max_det, top_k: see ``postprocess.select_detections``.
        nms: ``False`` returns the decoded predictions instead (``--no-nms``).
        with_decoded: also return the decoded predictions last (used by the export check).

    ``forward(images (B, 3, S, S) float [0, 1])`` returns ``(num_dets int32 (B,), boxes (B, D, 4),
    scores (B, D), labels int32 (B, D), keypoints (B, D, K, 3))`` with ``D = max_det``; with ``nms=False``
    a single ``(B, N, 4 + 1 + C + 3K)`` tensor.
    """

    def __init__(self, model: YOLOPose, num_classes: int, conf: float = 0.25, iou: float = 0.65,
                 max_det: int = 100, top_k: int = 1000, nms: bool = True, with_decoded: bool = False) -> None:
        super().__init__()
        self.model = model
        self.num_classes, self.conf, self.iou, self.max_det, self.top_k = num_classes, conf, iou, max_det, top_k
        self.nms, self.with_decoded = nms, with_decoded

    def decoded(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> decoded predictions ``(B, N, 4 + 1 + C + 3K)`` in input pixels."""
        return decode(self.model(images), self.model.anchors, self.model.strides, self.num_classes)

    def select(self, decoded: torch.Tensor, conf: float | None = None) -> Detections:
        """``select_detections`` with this wrapper's settings (``conf`` overrides the threshold)."""
        return select_detections(decoded, self.num_classes, self.conf if conf is None else conf, self.iou,
                                 self.max_det, self.top_k)

    def forward(self, images: torch.Tensor) -> Any:
        decoded = self.decoded(images)
        if not self.nms:
            return decoded
        det = self.select(decoded)
        out = (det.num_dets.to(torch.int32), det.boxes, det.scores, det.labels.to(torch.int32), det.keypoints)
        return (*out, decoded) if self.with_decoded else out


def outputs_to_detections(outputs: Sequence[Any]) -> Detections:
    """The five graph outputs (numpy or torch, in ``OUTPUT_NAMES`` order) -> ``Detections`` of torch tensors."""
    t = [torch.as_tensor(np.asarray(o)) for o in outputs[:5]]
    return Detections(t[0].long(), t[1].float(), t[2].float(), t[3].long(), t[4].float())

