"""Lightning callbacks: the one writer of ``last.ckpt``, validation images with skeletons in TensorBoard, and
precise BatchNorm."""
from __future__ import annotations

import itertools
import logging
from collections import deque
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from yolopose.viz import draw_poses, side_by_side

log = logging.getLogger("yolopose")

RUN_KEY = "yolopose_run"
"""Checkpoint entry naming the TensorBoard run folder that wrote it: ``{"save_dir", "name", "version"}``."""


def last_checkpoint_folder(last_dirpath: str | None, best_dirpath: str | None) -> Path | None:
    """The one rule for where ``last.ckpt`` lives, used by its writer and by ``--ckpt_path last``:
    ``last_checkpoint.dirpath`` when set, else the best checkpoint's ``checkpoint.dirpath`` when set, else
    ``None``: the run's own ``<save_dir>/<logger name>/version_N/checkpoints`` (known once the run has a version).
    """
    folder = last_dirpath or best_dirpath
    return Path(folder) if folder else None


def run_of(checkpoint: dict, path: Path) -> dict | None:
    """The run folder ``{"save_dir", "name", "version"}`` a checkpoint at ``path`` belongs to: read off the path
    when it sits in the default layout ``<save_dir>/<name>/<version>/checkpoints/`` (right even after the whole
    folder was moved), else as the checkpoint recorded it (``RUN_KEY``), else ``None``."""
    if path.parent.name == "checkpoints" and path.parents[1].name.startswith("version_") and len(path.parents) > 3:
        return {"save_dir": str(path.parents[3]), "name": path.parents[2].name, "version": path.parents[1].name}
    run = checkpoint.get(RUN_KEY)
    return dict(run) if isinstance(run, dict) and {"save_dir", "name", "version"} <= set(run) else None


class LastCheckpoint(Checkpoint):
    """The one writer of ``last.ckpt``: the newest full training state (weights, EMA, optimiser, loop
    counters; the LR schedule is a function of the step), written

    - every ``every_n_train_steps`` optimiser steps (0: never on a step count),
    - after every validation in ``fit``, once the best checkpoint has acted on it (a validation at the end
      of an epoch: at that epoch's end, as ``ModelCheckpoint`` saves then; one within an epoch: right
      after it), so it holds that validation's bookkeeping and any statistics recomputed before it,
    - at the last step of a ``max_steps`` run (a mid-epoch state, which resumes exactly), and at the end of
      ``fit`` when the final step is not saved yet, so after a finished run ``last.ckpt`` holds the final
      global step (what export and a resume should start from),
    - at the step where the run is told to stop: a ``max_time`` / early-stopping stop (``trainer.should_stop``),
      a SIGTERM (what SLURM and Kubernetes send before a kill; the process then exits with 143), Ctrl-C or an
      exception (written from ``on_exception``, by rank 0 alone: the other ranks may never arrive); the state of
      the last completed optimiser step, so ``--ckpt_path last`` loses nothing.

    Every checkpoint also records its TensorBoard run folder (``RUN_KEY``), so a resume writes its logs and
    checkpoints back into the run it continues (``train.py``).

    It rewrites one file in place, so there is never a ``last-v1.ckpt``; the best checkpoint is
    ``ModelCheckpoint``'s business and a separate file. Writes go through the Trainer's ``CheckpointIO``
    (atomic under ``train.py``: ``yolopose.checkpoint_io``), so a kill mid-write costs at most the steps
    since the previous write.

    Being a ``Checkpoint``, Lightning runs it with the checkpoint callbacks, after all others, in the order
    given; it must come after the ``ModelCheckpoint`` (``train.py`` adds it so, and ``setup`` checks), so the
    ``last.ckpt`` written after a validation holds the best-checkpoint bookkeeping of that validation.

    Args:
        every_n_train_steps: optimiser steps between writes (0 turns the step count off).
        dirpath: folder of ``last.ckpt``; default: the best checkpoint's folder (``last_checkpoint_folder``).
    """

    FILE_NAME = "last.ckpt"

    def __init__(self, every_n_train_steps: int = 100, dirpath: str | None = None) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"last_checkpoint.every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.every_n_train_steps = every_n_train_steps
        self.dirpath = dirpath
        self._folder: Path | None = Path(dirpath) if dirpath else None
        self._saved_step: int | None = None
        self._at_epoch_end = False  # a validation ran on the epoch's last batch: write at the epoch's end
        self._training = False      # between on_train_start and on_train_end: a state worth saving exists

    @property
    def path(self) -> Path | None:
        """Where ``last.ckpt`` goes (known once ``fit`` has started)."""
        return self._folder / self.FILE_NAME if self._folder is not None else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        later = trainer.callbacks[trainer.callbacks.index(self) + 1:]
        if any(isinstance(c, ModelCheckpoint) for c in later):
            raise ValueError("LastCheckpoint must come after every ModelCheckpoint in the Trainer's callbacks")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._saved_step, self._at_epoch_end, self._training = None, False, False
        best = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
        # The best checkpoint's dirpath was resolved (and broadcast) in its setup: the set one, or the run's own.
        self._folder = last_checkpoint_folder(self.dirpath, getattr(best, "dirpath", None))
        if self._folder is None:  # trainer.log_dir is a collective: every rank runs this hook, so every rank asks
            self._folder = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After any restore: the resumed step is on disk already, and a crash before the next step rewrites nothing.
        self._saved_step, self._training = trainer.global_step, True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n, step = self.every_n_train_steps, trainer.global_step
        # The last step of a max_steps run and a step after which the run stops (max_time, early stopping,
        # SIGTERM) are written here: a mid-epoch state, which resumes exactly (on_train_end comes after Lightning
        # has closed the cut epoch as if it were complete, and a resume would skip the rest of it).
        stopping = trainer.should_stop or trainer.received_sigterm
        if step > 0 and (n and step % n == 0 or 0 < trainer.max_steps <= step or stopping):
            self._save(trainer, again=False)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.is_last_batch:
            self._at_epoch_end = True
        else:
            self._save(trainer, again=True)  # the same step again: validation may have changed the state

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning calls checkpoint callbacks' epoch-end hooks last, in order: after ModelCheckpoint's save.
        if self._at_epoch_end:
            self._at_epoch_end = False
            self._save(trainer, again=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, again=False)
        self._training = False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Ctrl-C, SIGTERM or an error while training: write the last completed step's state, on rank 0 alone
        and without ``trainer.save_checkpoint``'s barrier (an error on one rank never brings the others there)."""
        if not self._training or self.path is None or trainer.fast_dev_run:
            return
        self._training = False
        what = ("SIGTERM" if isinstance(exception, SIGTERMException) else
                "Ctrl-C" if isinstance(exception, KeyboardInterrupt) else type(exception).__name__)
        if self._saved_step != trainer.global_step:  # else written already (a SIGTERM seen at the batch's end)
            try:
                checkpoint = trainer._checkpoint_connector.dump_checkpoint()
                trainer.strategy.save_checkpoint(checkpoint, self.path)  # rank 0 writes, through the CheckpointIO
            except Exception as exc:  # noqa: BLE001 - the original exception goes on; this one is only reported
                log.warning("%s: last.ckpt not written (%s: %s); the previous one is kept", what,
                            type(exc).__name__, exc)
                return
            self._saved_step = trainer.global_step
        if trainer.is_global_zero:
            log.warning("%s at step %d: %s holds that step (continue with --ckpt_path last)", what,
                        trainer.global_step, self.path)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """Record the run folder in every checkpoint (``RUN_KEY``, read by ``run_of``)."""
        logger = trainer.logger
        if isinstance(logger, TensorBoardLogger):
            checkpoint[RUN_KEY] = {"save_dir": str(logger.save_dir), "name": logger.name, "version": logger.version}

    def _save(self, trainer: pl.Trainer, again: bool) -> None:
        """Write ``last.ckpt`` (every rank calls ``trainer.save_checkpoint``; rank 0 writes)."""
        if trainer.fast_dev_run or trainer.state.fn != TrainerFn.FITTING or self.path is None:
            return
        if not again and self._saved_step == trainer.global_step:
            return
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step


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


# --------------------------------------------------------------------------- precise BatchNorm
# Precise BatchNorm: recomputes a network's BatchNorm statistics from data before it is evaluated.
#
# BatchNorm layers normalise with batch statistics while training and with running averages
# (``momentum`` 0.03 here) in eval mode. Early in a run, or for a few hundred steps on a handful of images,
# those averages still remember the initial variance of 1 and the weights of many steps ago; the error
# compounds through the ~60 layers, so the eval-mode network can be far worse than the training loss says.
# Recomputing the statistics on recent training batches with the weights being evaluated removes that gap
# (the "precise BN" of Wu & Johnson, 2021).

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@torch.no_grad()
def recompute_batchnorm_stats(net: nn.Module, batches: Iterable[torch.Tensor], frozen: Iterable[str] = ()) -> int:
    """Set every BatchNorm's running mean/var of ``net`` to the average over ``batches``.

    Args:
        net: any module; its train/eval mode and the layers' momentum are restored afterwards.
        batches: network inputs, e.g. ``(B, 3, H, W)`` float tensors on ``net``'s device (consumed one
            at a time, so a generator keeps only one converted batch alive).
        frozen: names of submodules (e.g. ``backbone``) whose BatchNorm statistics stay as they are: they run in
            eval mode during the passes.
    Returns:
        the number of batches used (0 leaves the statistics untouched).
    """
    prefixes = tuple(f"{name}." for name in frozen)
    norms = [(f"{name}.".startswith(prefixes), m) for name, m in net.named_modules() if isinstance(m, _BN)]
    kept = [m for frozen_layer, m in norms if frozen_layer]
    layers = [m for frozen_layer, m in norms if not frozen_layer and m.track_running_stats]
    batches = iter(batches)
    first = next(batches, None)
    if first is None or not layers:
        return 0
    modes = {m: m.training for m in net.modules()}
    momenta = {m: m.momentum for m in layers}
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches, not an exponential one
    net.train()
    for m in kept:
        m.eval()
    used = 0
    try:
        for x in itertools.chain([first], batches):
            net(x)
            used += 1
    finally:
        for m, mode in modes.items():
            m.training = mode
        for m, momentum in momenta.items():
            m.momentum = momentum
    return used


class PreciseBatchNorm(pl.Callback):
    """Before each validation in ``fit``, recompute the evaluated network's BatchNorm statistics from the
    last ``num_batches`` training batches (images only; they are kept as references, not copied).

    The evaluated network is ``pl_module.inference_model`` (the EMA copy when there is one), so the new
    statistics are also what the next checkpoint saves. Useful for short runs and for the overfit check;
    in long runs the running averages have converged and this changes little. Under DDP each rank uses
    its own batches; with an EMA, ``PoseModule`` then gives every rank rank 0's copy before evaluating;
    without one, the DDP wrapper's forward broadcasts rank 0's statistics at every validation step.

    Args:
        num_batches: how many recent training batches to average over (0 turns it off).
    """

    def __init__(self, num_batches: int = 4) -> None:
        self.num_batches = num_batches
        self._recent: deque[torch.Tensor] = deque(maxlen=max(num_batches, 1))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.num_batches > 0:
            self._recent.append(batch["images"])

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or not self._recent:
            return
        frozen = getattr(pl_module, "frozen_statistics", lambda: [])()   # e.g. a frozen backbone's: kept as they are
        recompute_batchnorm_stats(pl_module.inference_model, (pl_module.to_input(x) for x in self._recent), frozen)
