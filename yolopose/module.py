"""PoseModule: the LightningModule around YOLOPose + PoseLoss (training, validation, optimiser)."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.utilities import rank_zero_info

from yolopose.assigner import AnchorAssigner
from yolopose.checkpoint import KEYPOINT_BRANCH, UNTRAINED_KEY, init_weights_from
from yolopose.dynamic_assigner import DynamicAssigner
from yolopose.ema import ModelEMA
from yolopose.evaluation import ValidationEvaluator
from yolopose.geometry import decode, default_sigmas
from yolopose.loss import PoseLoss
from yolopose.nn.head import PAPER_KPT_HEAD_DEPTH
from yolopose.nn.model import YOLOPose
from yolopose.optim import WarmupSchedule, build_optimizer, parameter_groups
from yolopose.postprocess import Detections, select_detections

log = logging.getLogger("yolopose")


class PoseModule(pl.LightningModule):
    """Trains and validates a ``YOLOPose`` model.

    Every argument is a plain value saved in the checkpoint's hyperparameters, so
    ``PoseModule.load_from_checkpoint(path)`` rebuilds the same model without a config. The dataset's
    ``num_keypoints``, ``num_classes``, ``sigmas``, ``keypoint_names``, ``skeleton`` and
    ``category_ids`` and ``keypoint_prior`` (the mean pose the keypoint biases start from) are linked from
    the DataModule by ``train.py``.

    Args:
        num_keypoints: K, from the data (no default: ``train.py`` links it from the DataModule).
        variant: model size ``n, s, m, l, x``.
        num_levels, anchors, kpt_head_depth, act, depth, width: see ``YOLOPose``.
        kpt_loss, box_weight, obj_weight, cls_weight, kpt_weight, kpt_conf_weight, kpt_l1_weight, kpt_nll_weight,
            anchor_t: see ``PoseLoss`` (``anchor_t``: its assigner's ratio test). With ``kpt_nll_weight > 0`` the head
            also predicts a log-scale per keypoint for the likelihood term (training only: exports are unchanged).
        assigner: ``static`` (the paper's YOLOv5 rule, ``AnchorAssigner``) or ``dynamic`` (each person's positives
            chosen among the anchors that fit it by a cost from the predictions, ``DynamicAssigner``).
        loss_reduction, kpt_normaliser: ``PoseLoss``'s ``reduction`` and ``kpt_normaliser`` (the COCO configs
            use the reference's ``per_level`` and ``reference``; see docs/scaling.md).
        optimizer: ``sgd`` (SGD with Nesterov momentum: the paper's recipe for long runs) or ``adamw``
            (AdamW, ``momentum`` as its first beta; converges faster in short runs such as the CPU demo).
        lr, lr_final, schedule, momentum, nesterov, weight_decay: the optimiser and its decay (``lr_final`` is a
            fraction of ``lr``). The loss is summed over the images of an optimiser step (per-device batch x
            devices x ``accumulate_grad_batches``), so ``lr`` is the step size of a nominal batch of
            ``nominal_batch_size`` images whatever the device count; ``weight_decay`` is for that nominal batch
            and is scaled by ``images per step / nominal_batch_size`` (the same decay per epoch at any scale).
        warmup_epochs, warmup_min_steps, warmup_bias_lr, warmup_momentum: the warm-up: ``warmup_epochs`` epochs of
            optimiser steps (at least ``warmup_min_steps``, at most the run), whatever ends the run.
        (With ``kpt_weight``, ``kpt_conf_weight``, ``kpt_l1_weight`` and ``kpt_nll_weight`` all 0 the keypoint branch
        is frozen at its initialisation, weight decay included, and checkpoints record it as never trained.)
        ema_decay, ema_tau: weight EMA used for validation and saved in checkpoints (``ema_decay = 0`` turns it off).
        conf_threshold, iou_threshold, max_det, top_k: validation post-processing.
        max_bad_steps: consecutive non-finite losses after which training stops with an error.
        channels_last: keep weights and inputs in the NHWC memory layout (faster training steps on
            CPUs, docs/benchmarks.md; the usual choice on GPUs with AMP too). Results are unchanged.
        init_from: a yolopose checkpoint to start ``fit`` from: every layer whose tensors match by name and shape
            is copied (``checkpoint.init_weights_from``; one line reports what), the rest keeps its fresh
            initialisation, and training runs with this run's own optimiser and schedule (``--ckpt_path``
            resumes instead; when resuming, ``init_from`` is skipped). See docs/fine-tuning.md.
        freeze_backbone_epochs: keep the backbone fixed for the first N training epochs: its weights get no
            update (gradients are dropped after the DDP all-reduce, so the optimiser skips them) and its BatchNorm
            layers run in eval mode (statistics kept). The backbone's backward still runs.
    """

    def __init__(
        self,
        num_keypoints: int,
        variant: Literal["n", "s", "m", "l", "x"] = "s",
        num_classes: int = 1,
        sigmas: list[float] | None = None,
        keypoint_names: list[str] | None = None,
        skeleton: list[tuple[int, int]] | None = None,
        category_ids: list[int] | None = None,
        keypoint_prior: list[list[float]] | None = None,
        num_levels: int = 4,
        anchors: list[list[list[float]]] | None = None,
        kpt_head_depth: int = PAPER_KPT_HEAD_DEPTH,
        act: Literal["silu", "relu"] = "silu",
        depth: float | None = None,
        width: float | None = None,
        kpt_loss: Literal["oks", "l1"] = "oks",
        box_weight: float = 0.10,
        obj_weight: float = 1.0,
        cls_weight: float = 0.5,
        kpt_weight: float = 0.30,
        kpt_conf_weight: float = 0.05,
        kpt_l1_weight: float = 0.0,
        kpt_nll_weight: float = 0.0,
        loss_reduction: Literal["pooled", "per_level"] = "pooled",
        kpt_normaliser: Literal["coco", "reference"] = "coco",
        anchor_t: float = 4.0,
        assigner: Literal["static", "dynamic"] = "static",
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.01,
        lr_final: float = 0.01,
        schedule: Literal["cosine", "linear"] = "cosine",
        momentum: float = 0.937,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        nominal_batch_size: int = 64,
        warmup_epochs: float = 3.0,
        warmup_min_steps: int = 100,
        warmup_bias_lr: float = 0.1,
        warmup_momentum: float = 0.8,
        ema_decay: float = 0.9999,
        ema_tau: float = 2000.0,
        conf_threshold: float = 0.001,
        iou_threshold: float = 0.65,
        max_det: int = 300,
        top_k: int = 1000,
        max_bad_steps: int = 20,
        channels_last: bool = True,
        init_from: str | None = None,
        freeze_backbone_epochs: int = 0,
    ) -> None:
        super().__init__()
        if freeze_backbone_epochs < 0:
            raise ValueError(f"model.freeze_backbone_epochs must be >= 0, got {freeze_backbone_epochs}")
        self.save_hyperparameters()
        self.model = YOLOPose(variant, num_keypoints=num_keypoints, num_classes=num_classes, num_levels=num_levels,
                              anchors=anchors, kpt_head_depth=kpt_head_depth, act=act, depth=depth, width=width,
                              keypoint_prior=keypoint_prior, kpt_uncertainty=kpt_nll_weight > 0)
        sig = torch.tensor(sigmas, dtype=torch.float32) if sigmas is not None else default_sigmas(num_keypoints)
        if assigner == "static":
            matcher = AnchorAssigner(self.model.anchors, self.model.strides, anchor_t=anchor_t)
        elif assigner == "dynamic":
            matcher = DynamicAssigner(self.model.anchors, self.model.strides, sigmas=sig, num_classes=num_classes,
                                      anchor_t=anchor_t)
        else:
            raise ValueError(f"model.assigner must be 'static' or 'dynamic', got {assigner!r}")
        self.criterion = PoseLoss(num_keypoints=num_keypoints, num_classes=num_classes, assigner=matcher, sigmas=sig,
                                  kpt_loss=kpt_loss, box_weight=box_weight, obj_weight=obj_weight,
                                  cls_weight=cls_weight, kpt_weight=kpt_weight, kpt_conf_weight=kpt_conf_weight,
                                  kpt_l1_weight=kpt_l1_weight, kpt_nll_weight=kpt_nll_weight, reduction=loss_reduction,
                                  kpt_normaliser=kpt_normaliser)
        self.sigmas = sig.tolist()
        # Keypoint losses all off (a detector-first run): the keypoint branch gets no gradient, so it must get no
        # update either (weight decay alone would shrink it to nothing); checkpoints record it as never trained.
        self.untrained: list[str] = []
        if kpt_weight == 0 and kpt_conf_weight == 0 and kpt_l1_weight == 0 and kpt_nll_weight == 0:
            self.model.head.kpt.requires_grad_(False)
            self.untrained.append(KEYPOINT_BRANCH)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ema = ModelEMA(self.model, ema_decay, ema_tau) if ema_decay > 0 else None
        self.schedule: WarmupSchedule | None = None
        self.bad_steps = 0            # consecutive non-finite losses
        self.skipped_steps = 0        # all non-finite losses this run
        self.skipped_files: set[str] = set()  # distinct unreadable images this epoch (from the data loader)
        self._evaluator: ValidationEvaluator | None = None
        self.last_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ inference
    @property
    def inference_model(self) -> YOLOPose:
        """The weights to evaluate and export: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` float [0, 1] -> raw maps of the inference model."""
        return self.inference_model(images)

    def detect(self, images: torch.Tensor) -> Detections:
        """``(B, 3, H, W)`` float [0, 1] -> ``Detections`` in input pixels (validation settings)."""
        return self.select(self.inference_model(self.to_input(images)))

    def select(self, raws: list[torch.Tensor]) -> Detections:
        """Raw maps of the inference model -> decode -> ``select_detections`` with the validation settings.

        Always in float32, outside any autocast (``bf16-mixed`` / ``16-mixed`` validation included).
        """
        m, hp = self.inference_model, self.hparams
        with torch.autocast(raws[0].device.type, enabled=False):
            return select_detections(decode(raws, m.anchors, m.strides, hp.num_classes), hp.num_classes,
                                     hp.conf_threshold, hp.iou_threshold, hp.max_det, hp.top_k)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` from the loader -> float [0, 1] on the same device (in the model's layout)."""
        x = images.float().div_(255) if images.dtype == torch.uint8 else images
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        raws, scales = self.model.forward_with_scales(self.to_input(batch["images"]))
        loss, parts = self.criterion(raws, batch["targets"], batch.get("ignore"), scales)
        self.skipped_files.update(batch.get("skipped_files", ()))
        # Every rank must agree to skip, or DDP would wait forever for the missing gradients.
        if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False):
            self._count_bad_step(loss)
            return None  # Lightning skips backward and the optimiser step; grads stay unset
        self.bad_steps = 0
        bsz = batch["images"].shape[0]
        self.log("train/loss", loss / bsz, prog_bar=True, batch_size=bsz)
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, batch_size=bsz)
        if self.schedule is not None:
            self.log("train/lr", self.schedule.at(self.global_step, is_bias=False)[0], batch_size=bsz)
        return loss * self._batches_per_step()

    def _batches_per_step(self) -> int:
        """Batches whose gradients one optimiser step combines: DDP ranks x ``accumulate_grad_batches``.

        The criterion's total is its mean loss times this batch's size; DDP then averages the gradients over
        the ranks and Lightning divides each accumulated batch's loss by the accumulation count. Multiplying
        by both gives a step the gradient of the mean loss times the number of images it saw, exactly as one
        device with the whole batch (``lr`` is then per nominal batch of ``nominal_batch_size`` images).
        """
        return getattr(self.trainer, "world_size", 1) * self.trainer.accumulate_grad_batches

    def _count_bad_step(self, loss: torch.Tensor) -> None:
        """A non-finite loss: warn and count; too many in a row stop training with a clear error."""
        self.bad_steps += 1
        self.skipped_steps += 1
        log.warning("non-finite loss (%s) at step %d: step skipped (%d in a row, %d in total)",
                    loss.item(), self.global_step, self.bad_steps, self.skipped_steps)
        if self.bad_steps >= self.hparams.max_bad_steps:
            raise FloatingPointError(
                f"{self.bad_steps} consecutive non-finite losses (last at step {self.global_step}): training "
                "stopped; the last good checkpoint is untouched. Lower the learning rate, check the data, or "
                "use --trainer.precision 32.")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run keeps its lineage's record of what was never trained."""
        if UNTRAINED_KEY in checkpoint:
            self.untrained = [p for p in self.untrained if p in checkpoint[UNTRAINED_KEY]]

    def on_fit_start(self) -> None:
        """``init_from``: copy the matching layers (after any ``--ckpt_path`` restore, which then wins)."""
        path = self.hparams.init_from
        if not path:
            return
        if self.trainer.ckpt_path:
            rank_zero_info(f"init_from {path} skipped: resuming from {self.trainer.ckpt_path}")
            return
        report, copied = init_weights_from(self.model, path)
        # A branch this run does not train but that came trained from the checkpoint is not untrained any more.
        self.untrained = [p for p in self.untrained
                          if not any(layer == p or layer.startswith(p + ".") for layer in copied)]
        if self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())
        rank_zero_info(report)

    def _backbone_frozen(self) -> bool:
        return self.current_epoch < self.hparams.freeze_backbone_epochs

    def frozen_statistics(self) -> list[str]:
        """Submodules whose BatchNorm statistics are fixed now (``freeze_backbone_epochs``): ``PreciseBatchNorm``
        leaves them as they are."""
        return ["backbone"] if self.hparams.freeze_backbone_epochs and self._backbone_frozen() else []

    def on_train_epoch_start(self) -> None:
        if self.hparams.freeze_backbone_epochs:
            self.model.backbone.train(not self._backbone_frozen())
        self._start_data_epoch()

    def on_train_start(self) -> None:
        self._start_data_epoch()   # a run resumed mid-epoch gets no on_train_epoch_start

    def _start_data_epoch(self) -> None:
        """Tell the data which epoch trains now (``close_mosaic_epochs``): the same on every rank and after a resume."""
        start_epoch = getattr(self.trainer.datamodule, "start_epoch", None)
        if start_epoch is not None:
            start_epoch(self.current_epoch)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """While the backbone is frozen, drop its gradients: the optimiser skips parameters without one."""
        if self.hparams.freeze_backbone_epochs and self._backbone_frozen():
            for p in self.model.backbone.parameters():
                p.grad = None

    def on_train_epoch_end(self) -> None:
        files = sorted(self._all_ranks(self.skipped_files))
        # The same on every rank already; "max" only keeps Lightning's epoch-level DDP check quiet.
        self.log("train/skipped_images", float(len(files)), sync_dist=True, reduce_fx="max")
        self.log("train/skipped_steps", float(self.skipped_steps))
        if files and self.trainer.is_global_zero:
            log.warning("epoch %d: %d unreadable image(s) skipped: %s%s", self.current_epoch, len(files),
                        ", ".join(files[:5]), " ..." if len(files) > 5 else "")
        self.skipped_files = set()

    @staticmethod
    def _all_ranks(files: set[str]) -> set[str]:
        """The union of ``files`` over the DDP ranks (a collective: every rank calls it)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return set(files)
        gathered: list[list[str] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, sorted(files))
        return set().union(*(g or [] for g in gathered))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        batch = getattr(self.trainer.datamodule, "batch_size", hp.nominal_batch_size) if self.trainer else 1
        per_step = self._batches_per_step() if self.trainer else 1
        wd = hp.weight_decay * batch * per_step / hp.nominal_batch_size   # images per optimiser step / nominal
        groups = parameter_groups(self.model, wd)
        # fp16 AMP with clipping: Lightning unscales the gradients to clip them, which a fused optimiser cannot allow.
        trainer = self.trainer
        clips = bool(getattr(trainer, "gradient_clip_val", None))
        fp16 = getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is not None
        opt = build_optimizer(hp.optimizer, groups, hp.lr, hp.momentum, hp.nesterov, allow_fused=not (clips and fp16))
        total, per_epoch = self._run_length()
        warmup = min(max(round(hp.warmup_epochs * per_epoch), hp.warmup_min_steps), total)
        # Adam-type steps are ~lr per parameter whatever the gradient, so a bias LR of 0.1 would throw the
        # biases around: with AdamW the biases warm up from 0 like every other group.
        bias_lr = hp.warmup_bias_lr if hp.optimizer == "sgd" else 0.0
        self.schedule = WarmupSchedule(hp.lr, hp.lr_final, total, warmup, hp.momentum, hp.warmup_momentum,
                                       bias_lr, hp.schedule)
        return opt

    def _run_length(self) -> tuple[int, int]:
        """``(optimiser steps of the whole run, optimiser steps per epoch)``: the run's real total (``max_steps``
        and ``max_epochs``, whichever ends it first) for the decay, and the epoch's steps (its batches over
        ``accumulate_grad_batches``, the last window counted) that ``warmup_epochs`` is measured in.

        Raises:
            ValueError: neither ``max_epochs`` nor ``max_steps`` ends the run (the decay needs its length).
        """
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ValueError("the LR schedule needs the run's length: set trainer.max_epochs or trainer.max_steps")
        if trainer.train_dataloader is None:   # estimated_stepping_batches does not load it for max_epochs -1
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        per_epoch = total if batches == float("inf") else math.ceil(batches / trainer.accumulate_grad_batches)
        return max(int(total), 1), max(int(per_epoch), 1)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Set this step's LR and momentum, step, then update the EMA (not after a skipped step)."""
        if self.schedule is not None:
            self.schedule.apply(optimizer, self.global_step)
        bad_before = self.skipped_steps
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.ema is not None and self.skipped_steps == bad_before:
            self.ema.update(self.model)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the parts never trained (``init_from`` leaves them fresh) and refuse to write weights that are not
        finite (a ruined checkpoint must never replace a good one)."""
        checkpoint[UNTRAINED_KEY] = list(self.untrained)
        for name, value in checkpoint["state_dict"].items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise FloatingPointError(f"refusing to save a checkpoint: {name} has non-finite values")

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._sync_ema_from_rank_zero()
        if self._evaluator is None:
            cats = self.hparams.category_ids or list(range(1, self.hparams.num_classes + 1))
            self._evaluator = ValidationEvaluator(self.trainer.datamodule.val_coco_gt(), self.sigmas, cats)
        self._evaluator.reset()

    def _sync_ema_from_rank_zero(self) -> None:
        """Give every DDP rank rank 0's EMA weights and BatchNorm statistics before evaluating.

        Each rank updates its EMA from its own model, whose BatchNorm running statistics come from its own
        batches, so the ranks' EMA copies drift apart by a little; rank 0's copy is the one checkpoints
        save, so it is the one every rank must evaluate.
        """
        if self.ema is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        for tensor in self.ema.module.state_dict().values():
            dist.broadcast(tensor, src=0)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        images = self.to_input(batch["images"])
        m = self.inference_model
        raws, scales = m.forward_with_scales(images)
        _, parts = self.criterion(raws, batch["targets"], batch.get("ignore"), scales)
        bsz = images.shape[0]
        self.log_dict({f"val/{k}": v for k, v in parts.items()}, batch_size=bsz, sync_dist=True)
        det = self.select(raws).to("cpu")  # one device-to-host copy per batch, not five per image
        self._evaluator.update(det, batch["meta"])
        return {"detections": det}

    def on_validation_epoch_end(self) -> None:
        metrics = self._evaluator.compute()   # a collective: every rank
        # Every rank must ask for log_dir: the property is itself a collective (a broadcast).
        out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self._evaluator.write(out_dir, epoch=self.current_epoch, global_step=self.global_step)
        self.last_metrics = metrics
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, sync_dist=False)
