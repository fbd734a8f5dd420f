"""Lightning callbacks: validation images with skeletons in TensorBoard."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from yolopose.viz import draw_poses, side_by_side


def _gt_of_image(targets: torch.Tensor, b: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(N, 4)`` xyxy and keypoints ``(N, K, 3)`` of image ``b`` from a collated targets tensor."""
    t = targets[targets[:, 0] == b].float().cpu()
    cx, cy, w, h = t[:, 2], t[:, 3], t[:, 4], t[:, 5]
    boxes = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), 1)
    return boxes.numpy(), t[:, 6:].reshape(-1, k, 3).numpy()


class ValidationImageLogger(pl.Callback):
    """After each validation, logs the first ``num_images`` validation images to TensorBoard: the
    ground truth (left) beside the predictions with score >= ``score_threshold`` (right).

    Args:
        num_images: how many images (taken from the first validation batches).
        score_threshold: minimum detection score to draw.
        kpt_threshold: minimum keypoint confidence to draw.
    """

    def __init__(self, num_images: int = 4, score_threshold: float = 0.3, kpt_threshold: float = 0.5) -> None:
        self.num_images, self.score_threshold, self.kpt_threshold = num_images, score_threshold, kpt_threshold
        self._panels: list[np.ndarray] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._panels = []

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or len(self._panels) >= self.num_images:
            return
        det = outputs["detections"]
        k = pl_module.hparams.num_keypoints
        skeleton = [tuple(p) for p in (pl_module.hparams.skeleton or [])]
        for b in range(batch["images"].shape[0]):
            if len(self._panels) >= self.num_images:
                break
            image = batch["images"][b].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
            gt_boxes, gt_kpts = _gt_of_image(batch["targets"], b, k)
            d = det.image(b)
            keep = (d.scores >= self.score_threshold).cpu().numpy()
            left = draw_poses(image, gt_boxes, gt_kpts, skeleton, 0.5, color=(60, 220, 60))
            right = draw_poses(image, d.boxes.float().cpu().numpy()[keep], d.keypoints.float().cpu().numpy()[keep],
                               skeleton, self.kpt_threshold, scores=d.scores.float().cpu().numpy()[keep])
            self._panels.append(side_by_side(left, right))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._panels:
            return
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                for i, panel in enumerate(self._panels):
                    experiment.add_image(f"val_images/{i}", panel, trainer.global_step, dataformats="HWC")
