"""``PoseDataModule``: train/val datasets and loaders for COCO keypoints, YOLO-pose txt or the synthetic set.

Every split is parsed and validated in ``__init__``, so a bad annotation file, a missing folder or a
K that disagrees between splits stops the CLI with a clear message before any model is built. The
dataset facts the model needs (``num_keypoints``, ``num_classes``, ``sigmas``, ``keypoint_names``,
``skeleton``, ``category_ids``, ``keypoint_prior``) are plain attributes read from the data, and
``train.py`` links them into the model: K is never typed twice.

Sources (``format``):
- ``coco``: ``train_ann`` + ``train_images``, ``val_ann`` + ``val_images`` (COCO keypoints JSON + folder);
- ``yolo``: ``yaml`` (an Ultralytics-style pose data YAML with ``train`` and ``val`` entries);
- ``synthetic``: the built-in stick-figure people, generated once into a cache (``synthetic`` settings).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader

from yolopose.data.albu import DEFAULT_ALBUMENTATIONS, AlbumentationsStage
from yolopose.data.augment import AugmentConfig
from yolopose.data.coco import CocoKeypoints
from yolopose.data.dataset import TrainDataset, ValDataset, collate, single_thread_opencv, worker_init_fn
from yolopose.data.reader import LabelledImages, check_negatives_fraction, keep_negatives
from yolopose.data.sample import DatasetError
from yolopose.data.yolo_txt import YoloPoseTxt

if TYPE_CHECKING:  # the generator is imported only for format: synthetic (jsonargparse resolves the type)
    from yolopose.synthetic import SyntheticConfig


class PoseDataModule(pl.LightningDataModule):
    """Keypoint data for ``PoseModule``.

    Args:
        format: ``coco``, ``yolo`` or ``synthetic`` (see the module docstring).
        train_ann, train_images, val_ann, val_images: COCO JSON files and their image folders.
        yaml: YOLO-pose data YAML (``format: yolo``).
        synthetic: what to generate for ``format: synthetic`` (defaults: ``SyntheticConfig()``).
        image_size: square network input side S (a multiple of the model's largest stride, 64 for P3-P6).
        batch_size: images per batch (per device under DDP).
        num_workers: DataLoader worker processes.
        flip_index: mirror partner of each keypoint (default: from left/right in the names or the YAML).
        sigmas: per-keypoint OKS sigmas (default: COCO's for a 17-keypoint person, else uniform).
        mosaic, degrees, translate, scale, shear, hsv_h, hsv_s, hsv_v, fliplr: augmentation strengths
            (see ``AugmentConfig``); ``flip_swap: false`` flips without the left/right swap (ablation only).
        albumentations: albumentations transforms applied to each training item after that geometry, a list of
            ``{class_path: Blur, init_args: {p: 0.1}}`` (or ``A.to_dict``) entries; the default is a light
            pixel-level stage (``DEFAULT_ALBUMENTATIONS``), ``[]`` turns it off (``docs/augmentation.md``).
        val_batch_size: validation batch size (default: ``batch_size``).
        train_negatives: fraction of the training images without a labelled instance (no annotation, only
            crowd regions, or only people without labelled keypoints) to keep: 1 all (default), 0 none (the
            YOLO-Pose reference's and Ultralytics' COCO train set: the 56 599 of 118 287 images with a person
            with keypoints), in between a fixed random share. Validation always scores the whole split.
        close_mosaic_epochs: the last N epochs of the run train without mosaic (single images letterboxed, with the
            rest of the augmentation), as YOLOX and Ultralytics do; the switch follows the epoch counter, so a resumed
            run and every DDP rank are in the same phase (``start_epoch``).
        mosaic_buffer: a mosaic's three partner tiles come from this many recently decoded images of the loader
            worker, so an item decodes one image instead of four (``TrainDataset``; 0: partners drawn from the
            whole split, the exact pre-buffer behaviour). docs/benchmarks.md has what it buys.
        cache, cache_gb: keep decoded training images in RAM, at most ``cache_gb`` GB for a rank's loader processes
            together (each of its ``num_workers`` workers fills its own share; every DDP rank the same again):
            ``ram`` as many as fit, ``auto`` (default) only when the whole split fits a worker's share (a fine-tuning
            set of a few thousand images; not COCO), ``none`` never. The items do not change.
    """

    def __init__(
        self,
        format: Literal["coco", "yolo", "synthetic"] = "coco",
        train_ann: str | None = None,
        train_images: str | None = None,
        val_ann: str | None = None,
        val_images: str | None = None,
        yaml: str | None = None,
        synthetic: SyntheticConfig | None = None,
        image_size: int = 640,
        batch_size: int = 16,
        num_workers: int = 4,
        flip_index: list[int] | None = None,
        sigmas: list[float] | None = None,
        mosaic: float = 1.0,
        degrees: float = 0.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.5, 1.5),
        shear: float = 0.0,
        hsv_h: float = 0.015,
        hsv_s: float = 0.7,
        hsv_v: float = 0.4,
        fliplr: float = 0.5,
        flip_swap: bool = True,
        albumentations: list[dict[str, Any]] | None = DEFAULT_ALBUMENTATIONS,
        val_batch_size: int | None = None,
        train_negatives: float = 1.0,
        close_mosaic_epochs: int = 0,
        mosaic_buffer: int = 64,
        cache: Literal["none", "ram", "auto"] = "auto",
        cache_gb: float = 2.0,
    ) -> None:
        super().__init__()
        if image_size <= 0 or image_size % 64:
            raise DatasetError(f"data.image_size must be a positive multiple of 64 (the P6 stride), got {image_size}")
        if batch_size < 1 or num_workers < 0:
            raise DatasetError(f"data.batch_size must be >= 1 and data.num_workers >= 0, "
                               f"got {batch_size}, {num_workers}")
        check_negatives_fraction(train_negatives)   # before any file is parsed
        if cache not in ("none", "ram", "auto") or cache_gb < 0:
            raise DatasetError(f"data.cache must be none, ram or auto and data.cache_gb >= 0, got {cache!r}, "
                               f"{cache_gb}")
        if close_mosaic_epochs < 0 or mosaic_buffer < 0:
            raise DatasetError(f"data.close_mosaic_epochs and data.mosaic_buffer must be >= 0, got "
                               f"{close_mosaic_epochs}, {mosaic_buffer}")
        self.mosaic_buffer = mosaic_buffer
        self.close_mosaic_epochs = close_mosaic_epochs
        self._train_ds: TrainDataset | None = None
        self._resume_epoch: int | None = None
        self.format = format
        # Recorded in checkpoints (``datamodule_hyper_parameters``): predict and export default to it.
        self.save_hyperparameters({"image_size": image_size}, logger=False)
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.val_batch_size = val_batch_size or batch_size
        self.augment = AugmentConfig(mosaic=mosaic, degrees=degrees, translate=translate, scale=tuple(scale),
                                     shear=shear, hsv_h=hsv_h, hsv_s=hsv_s, hsv_v=hsv_v, fliplr=fliplr,
                                     flip_swap=flip_swap)
        # Built (each transform tried once) before the data is read: a bad entry stops the CLI at once.
        self.albumentations = AlbumentationsStage(albumentations, image_size) if albumentations else None
        self.train_split, self.val_split = self._read_splits(format, train_ann, train_images, val_ann, val_images,
                                                             yaml, synthetic, flip_index, sigmas)
        self.train_split = keep_negatives(self.train_split, train_negatives)
        self.cache_bytes = self._cache_budget(cache, cache_gb)
        info = self.train_split.info
        other = self.val_split.info
        if (other.num_keypoints, other.category_ids) != (info.num_keypoints, info.category_ids):
            raise DatasetError(f"{self.val_split.source}: K={other.num_keypoints}, categories {other.category_ids} "
                               f"but {self.train_split.source} has K={info.num_keypoints}, categories "
                               f"{info.category_ids}: train and val must share the keypoint definition")
        self.info = info
        self.num_keypoints = info.num_keypoints
        self.num_classes = info.num_classes
        self.sigmas = list(info.sigmas)
        self.keypoint_names = list(info.keypoint_names)
        self.skeleton = [tuple(p) for p in info.skeleton]
        self.category_ids = list(info.category_ids)
        # Mean pose of the training labels: where the model's keypoint biases start (see PoseHead).
        self.keypoint_prior = [[round(float(x), 4), round(float(y), 4)]
                               for x, y in self.train_split.table.mean_pose()]
        self._val_gt: dict | None = None

    @staticmethod
    def _read_splits(format: str, train_ann: str | None, train_images: str | None, val_ann: str | None,
                     val_images: str | None, yaml: str | None, synthetic: SyntheticConfig | None,
                     flip_index: list[int] | None,
                     sigmas: list[float] | None) -> tuple[LabelledImages, LabelledImages]:
        """Parse and validate both splits (``DatasetError`` on any problem)."""
        if format == "yolo":
            if not yaml:
                raise DatasetError("data.format is 'yolo' but data.yaml (the dataset YAML) is not set")
            return (YoloPoseTxt(yaml, "train", flip_index, sigmas), YoloPoseTxt(yaml, "val", flip_index, sigmas))
        if format == "synthetic":
            from yolopose.synthetic import SyntheticConfig, ensure_synthetic_dataset

            paths = ensure_synthetic_dataset(synthetic or SyntheticConfig())
            train_ann, train_images = str(paths.train_ann), str(paths.train_images)
            val_ann, val_images = str(paths.val_ann), str(paths.val_images)
        elif format != "coco":
            raise DatasetError(f"data.format must be 'coco', 'yolo' or 'synthetic', got {format!r}")
        missing = [name for name, value in (("data.train_ann", train_ann), ("data.train_images", train_images),
                                            ("data.val_ann", val_ann), ("data.val_images", val_images)) if not value]
        if missing:
            raise DatasetError(f"data.format is 'coco' but {', '.join(missing)} not set")
        return (CocoKeypoints(train_ann, train_images, flip_index, sigmas),
                CocoKeypoints(val_ann, val_images, flip_index, sigmas))

    # ------------------------------------------------------------------ datasets and loaders
    def _cache_budget(self, cache: str, cache_gb: float) -> int:
        """Bytes of decoded training images each loader process may keep (``cache``); says what it decided."""
        if cache == "none":
            return 0
        sizes = self.train_split.table.sizes.astype(np.int64)   # as declared; an undeclared size counts as 640 x 640
        need = int(np.where(sizes.min(1) > 0, sizes[:, 0] * sizes[:, 1], 640 * 640).sum() * 3)
        processes = max(self.num_workers, 1)
        budget = int(cache_gb * 1e9 / processes)
        if cache == "auto" and need > budget:
            rank_zero_info(f"data.cache auto: the {len(sizes)} training images take {need / 1e9:.1f} GB decoded, more "
                           f"than data.cache_gb {cache_gb:g} over {processes} loader process(es): not cached")
            return 0
        rank_zero_info(f"data.cache {cache}: up to {min(need, budget) / 1e9:.2f} GB of decoded training images in RAM "
                       f"in each of {processes} loader process(es) ({len(sizes)} images, {need / 1e9:.2f} GB in all)")
        return budget

    def train_dataset(self) -> TrainDataset:
        return TrainDataset(self.train_split, self.image_size, self.augment, albumentations=self.albumentations,
                            mosaic_buffer=self.mosaic_buffer, cache_bytes=self.cache_bytes)

    def val_dataset(self) -> ValDataset:
        return ValDataset(self.val_split, self.image_size)

    def _loader(self, dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        if self.num_workers > 0:
            single_thread_opencv()  # one OpenCV thread per worker process; safe only when set before forking
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate, worker_init_fn=worker_init_fn, drop_last=False,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        self._train_ds = self.train_dataset()
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            # Lightning builds this loader (and its workers prefetch) before it restores a resumed run's loops,
            # and a run resumed mid-epoch gets no epoch-start hook: the epoch it resumes in comes from the
            # checkpoint's own state of this DataModule (``load_state_dict``).
            self.start_epoch(max(trainer.current_epoch, self._resume_epoch or 0))
        return self._loader(self._train_ds, self.batch_size, shuffle=True)

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the epoch the run continues in when resumed from it (the same epoch for a
        checkpoint written mid-epoch, the next one for one written after the epoch's last batch)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready >= trainer.num_training_batches
        return {"next_epoch": int(trainer.current_epoch) + int(done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the epoch a resumed run continues in (before its loaders are built)."""
        self._resume_epoch = state_dict.get("next_epoch")

    def run_epochs(self) -> int | None:
        """The epochs the attached trainer's run lasts (``max_epochs``, or fewer when ``max_steps`` ends it first);
        None without a trainer or a length."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        if trainer.max_steps is not None and trainer.max_steps > 0:
            world = max(int(getattr(trainer, "world_size", 1)), 1)
            batches = math.ceil(math.ceil(len(self.train_split) / world) / self.batch_size)
            limit = trainer.limit_train_batches
            if limit is not None:
                batches = min(batches, limit) if isinstance(limit, int) else max(int(batches * limit), 1)
            per_epoch = max(math.ceil(batches / trainer.accumulate_grad_batches), 1)
            by_steps = math.ceil(trainer.max_steps / per_epoch)
            epochs = by_steps if epochs is None else min(epochs, by_steps)
        return epochs

    def mosaic_at(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) trains with mosaic: all but the run's last ``close_mosaic_epochs``."""
        if self.augment.mosaic <= 0:
            return False
        epochs = self.run_epochs()
        return not (self.close_mosaic_epochs and epochs is not None and epoch >= epochs - self.close_mosaic_epochs)

    def start_epoch(self, epoch: int) -> None:
        """Called at the start of every training epoch (``PoseModule.on_train_epoch_start``): switch the mosaic
        off for the run's last ``close_mosaic_epochs`` epochs (in every loader worker, before they draw)."""
        if self._train_ds is None:
            return
        on = self.mosaic_at(epoch)
        if on != self._train_ds.mosaic_on:
            why = "" if on else f" for the last {self.close_mosaic_epochs} epoch(s) (data.close_mosaic_epochs)"
            rank_zero_info(f"epoch {epoch}: mosaic {'on' if on else 'off'}{why}")
        self._train_ds.set_mosaic(on)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset(), self.val_batch_size, shuffle=False)

    def val_coco_gt(self) -> dict:
        """pycocotools ground truth of the validation split, in original image pixels (built once)."""
        if self._val_gt is None:
            self._val_gt = self.val_split.coco_gt()
        return self._val_gt
