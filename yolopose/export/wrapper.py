"""What the exported graph computes: ``DecodedModel`` (network + decode) and ``DeployModel`` (+ selection)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from yolopose.export.contract import DEPLOY_DEFAULTS
from yolopose.geometry import decode
from yolopose.nn.model import YOLOPose
from yolopose.postprocess import Detections, select_detections


class DecodedModel(nn.Module):
    """Network + ``geometry.decode``: ``(B, 3, S, S)`` float [0, 1] -> ``(B, N, 4 + 1 + C + 3K)`` in input
    pixels (box xyxy, objectness, class probabilities, K x (x, y, confidence)); what ``--no-nms`` exports.

    ``half``: the network runs in float16 (weights and activations; ``export.py --half``), its input and its raw maps
    are cast at the boundary, and decode (and the selection after it) stay float32."""

    def __init__(self, model: YOLOPose, num_classes: int, half: bool = False) -> None:
        super().__init__()
        self.model, self.num_classes, self.half_network = model, num_classes, half
        if half:
            self.model.half()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.half_network:
            raws = [r.float() for r in self.model(images.half())]
        else:
            raws = self.model(images)
        return decode(raws, self.model.anchors.float(), self.model.strides, self.num_classes)

    def strides(self, size: int) -> torch.Tensor:
        """``(N,)`` the stride of the level each of the N predictions at input size ``size`` comes from."""
        m = self.model
        per_level = [torch.full((m.num_anchors * (size // int(s)) ** 2,), float(s)) for s in m.strides]
        return torch.cat(per_level)


class DeployModel(nn.Module):
    """Network + decode + detection selection with static-shaped outputs: what the ONNX graph computes.

    Args:
        model: the network (e.g. ``restore.load_deployable(path)[0]``).
        num_classes: C.
        conf, iou, max_det, top_k: see ``postprocess.select_detections`` (defaults: ``DEPLOY_DEFAULTS``).

    ``forward(images (B, 3, S, S) float [0, 1])`` returns ``(num_dets int32 (B,), boxes (B, D, 4),
    scores (B, D), labels int32 (B, D), keypoints (B, D, K, 3))`` with ``D = max_det``.
    """

    def __init__(self, model: YOLOPose, num_classes: int, conf: float = DEPLOY_DEFAULTS.conf,
                 iou: float = DEPLOY_DEFAULTS.iou, max_det: int = DEPLOY_DEFAULTS.max_det,
                 top_k: int = DEPLOY_DEFAULTS.top_k, half: bool = False) -> None:
        super().__init__()
        self.decoder = DecodedModel(model, num_classes, half)
        self.num_classes, self.conf, self.iou, self.max_det, self.top_k = num_classes, conf, iou, max_det, top_k

    @property
    def model(self) -> YOLOPose:
        return self.decoder.model

    def decoded(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> decoded predictions ``(B, N, 4 + 1 + C + 3K)`` in input pixels."""
        return self.decoder(images)

    def select(self, decoded: torch.Tensor, conf: float | None = None) -> Detections:
        """``select_detections`` with this wrapper's settings (``conf`` overrides the threshold)."""
        return select_detections(decoded, self.num_classes, self.conf if conf is None else conf, self.iou,
                                 self.max_det, self.top_k)

    def outputs(self, decoded: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Decoded predictions -> the five graph outputs (``OUTPUT_NAMES`` order, int32 counts and labels)."""
        det = self.select(decoded)
        return det.num_dets.to(torch.int32), det.boxes, det.scores, det.labels.to(torch.int32), det.keypoints

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.outputs(self.decoded(images))


def outputs_to_detections(outputs: Sequence[Any]) -> Detections:
    """The five graph outputs (numpy or torch, in ``OUTPUT_NAMES`` order) -> ``Detections`` of torch tensors."""
    t = [torch.as_tensor(np.asarray(o)) for o in outputs[:5]]
    return Detections(t[0].long(), t[1].float(), t[2].float(), t[3].long(), t[4].float())
