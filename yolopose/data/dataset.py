"""Torch datasets over a reader (training with augmentation, validation with letterbox), the collate
function and the per-worker seeding.

Randomness: each dataset draws from its own ``numpy.random.Generator``. ``worker_init_fn`` seeds it in
every DataLoader worker from the worker's torch seed and the distributed rank, so a run seeded with
``pl.seed_everything`` is reproducible and ranks/workers draw different streams; without workers it is
seeded lazily from ``torch.initial_seed()``.

Unreadable images: in training an item whose image (or any mosaic tile) cannot be read is logged on the
``yolopose.data`` logger and replaced by an item built from another random index; the replacements are
counted in ``Item.num_skipped`` and the unreadable files named in ``Item.skipped_files`` (a corrupt image
drawn into three mosaics is one file, three attempts). In validation the image keeps its slot (so every
image id reaches the evaluation): a grey image without labels is returned and counted.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from yolopose.data.albu import AlbumentationsStage
from yolopose.data.augment import AugmentConfig, Plan, TrainAugment
from yolopose.data.image_io import ImageReadError
from yolopose.data.reader import LabelledImages
from yolopose.data.sample import Item, Sample, empty_labels
from yolopose.data.transforms import FILL_VALUE, letterbox

log = logging.getLogger("yolopose.data")


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


class _Seeded(Dataset):
    rng: np.random.Generator | None = None

    def seed(self, seed: int | Sequence[int]) -> None:
        """Restart this dataset's random stream from ``seed``."""
        self.rng = np.random.default_rng(seed)

    def _rng(self) -> np.random.Generator:
        if self.rng is None:
            self.seed([torch.initial_seed(), _rank()])
        return self.rng


class TrainDataset(_Seeded):
    """Augmented training items (mosaic, affine, HSV, flip, then the albumentations stage) of ``size x size``.

    Args:
        reader: the split.
        size: output side S.
        cfg: augmentation strengths.
        max_retries: consecutive unreadable images tolerated for one item before giving up.
        albumentations: the stage applied after our geometry (None: none).
        mosaic_buffer: how many recently decoded images a mosaic's three partner tiles are drawn from (0: drawn
            from the whole split and decoded for the item). Each item then decodes one image instead of four. The
            buffer holds recent items' images, which the shuffled loader draws at random, so every image is still a
            partner three times an epoch on average (Ultralytics keeps such a buffer too); per loader worker.
        cache_bytes: keep up to this many bytes of decoded images in RAM (0: none), per process: an image decoded
            once is never decoded again (the same arrays, so the items are the same).
    """

    def __init__(self, reader: LabelledImages, size: int, cfg: AugmentConfig, max_retries: int = 16,
                 albumentations: AlbumentationsStage | None = None, mosaic_buffer: int = 0,
                 cache_bytes: int = 0) -> None:
        self.reader = reader
        self.augment = TrainAugment(size, cfg, reader.info.flip_index)
        self.albumentations = albumentations
        self.cfg = cfg
        self.max_retries = max_retries
        self._sizes: dict[int, tuple[int, int]] = {}  # decoded sizes of images the labels do not size
        # Mosaic on (1) or off (0), in shared memory: the main process switches it between epochs
        # (``close_mosaic``) and loader workers, forked or spawned, persistent or not, read the new value.
        self._mosaic_on = torch.ones((), dtype=torch.uint8).share_memory_()
        self._buffer: deque[Sample] = deque(maxlen=max(mosaic_buffer, 1))
        self.mosaic_buffer = mosaic_buffer
        self.cache_bytes = cache_bytes
        self._cache: dict[int, Sample] = {}
        self._cached_bytes = 0

    @property
    def mosaic_on(self) -> bool:
        """Whether items are drawn as mosaics (with probability ``cfg.mosaic``) or as single images."""
        return bool(self._mosaic_on)

    def set_mosaic(self, on: bool) -> None:
        """Turn the mosaic on or off for every item drawn from now on, in every loader worker."""
        self._mosaic_on.fill_(int(on))

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Item:
        rng = self._rng()
        skipped = 0
        files: dict[str, None] = {}  # ordered set
        while True:
            try:
                item = self._build(int(index), rng)
                item.num_skipped, item.skipped_files = skipped, tuple(files)
                return item
            except ImageReadError as e:
                skipped += 1
                files[e.path or str(e)] = None
                if skipped > self.max_retries:
                    raise ImageReadError(f"{skipped} images in a row could not be read; last: {e}") from e
                log.warning("skipping unreadable training image: %s", e)
                index = int(rng.integers(len(self)))

    def _size(self, i: int) -> tuple[int, int] | None:
        return self.reader.declared_size(i) or self._sizes.get(i)

    def _load(self, i: int) -> Sample:
        if i in self._cache:
            return self._cache[i]
        sample = self.reader.load(i, bgr=True)  # TrainAugment converts to RGB once, on the output
        self._sizes[i] = sample.image.shape[:2]
        if self._cached_bytes + sample.image.nbytes <= self.cache_bytes:
            self._cache[i] = sample
            self._cached_bytes += sample.image.nbytes
        return sample

    def _build(self, index: int, rng: np.random.Generator) -> Item:
        mosaic = rng.random() < self.cfg.mosaic and self.mosaic_on
        if self.mosaic_buffer and self._buffer:
            return self._build_buffered(index, rng, mosaic)
        indices = [index]
        if mosaic:
            indices += rng.integers(0, len(self), 3).tolist()
        sizes = [self._size(i) for i in indices]
        if all(sizes):
            plan = self.augment.plan(rng, sizes)
            needed = self.augment.needed(plan, sizes)
            needed[0] = True  # the first image provides the meta
            samples = [self._load(i) if need else None for i, need in zip(indices, needed)]
        else:
            samples = [self._load(i) for i in indices]
            plan = self.augment.plan(rng, [s.image.shape[:2] for s in samples])
        if self.mosaic_buffer:
            self._buffer.append(samples[0])
        return self._finish(plan, samples, rng)

    def _build_buffered(self, index: int, rng: np.random.Generator, mosaic: bool) -> Item:
        """One decode: the item's own image, and for a mosaic three partners from the buffer of recent images."""
        partners = [self._buffer[i] for i in rng.integers(0, len(self._buffer), 3)] if mosaic else []
        main = self._load(index)
        self._buffer.append(main)
        samples = [main, *partners]
        return self._finish(self.augment.plan(rng, [s.image.shape[:2] for s in samples]), samples, rng)

    def _finish(self, plan: Plan, samples: list[Sample | None], rng: np.random.Generator) -> Item:
        item = self.augment.apply(plan, samples, bgr=True)
        if self.albumentations is not None:
            item = self.albumentations(item, int(rng.integers(2**32)), self.augment.flip_index)
        return item


class ValDataset(_Seeded):
    """Letterboxed validation items of ``size x size`` with the meta to map predictions back."""

    def __init__(self, reader: LabelledImages, size: int) -> None:
        self.reader = reader
        self.size = size

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Item:
        try:
            return letterbox(self.reader.load(index), self.size)
        except ImageReadError as e:
            log.error("validation image unreadable, evaluated as a blank image: %s", e)
            h, w = self.reader.declared_size(index) or (self.size, self.size)
            boxes, keypoints, classes, crowd = empty_labels(self.reader.info.num_keypoints)
            blank = Sample(np.full((h, w, 3), FILL_VALUE, np.uint8), boxes, keypoints, classes, crowd,
                           self.reader.image_id(index), (h, w))
            item = letterbox(blank, self.size)
            item.num_skipped, item.skipped_files = 1, (e.path or str(e),)
            return item


def collate(items: list[Item]) -> dict:
    """Batch B items of S x S with K keypoints.

    Returns:
        ``images`` uint8 ``(B, 3, S, S)``; ``targets`` float32 ``(T, 6 + 3K)`` rows ``[batch_idx, cls, cx, cy,
        w, h, x1, y1, v1, ...]`` in input pixels; ``ignore`` float32 ``(M, 5)`` rows ``[batch_idx, x1, y1,
        x2, y2]``; ``meta`` list of B dicts; ``num_skipped`` int; ``skipped_files`` sorted list of the distinct
        unreadable files behind the batch.
    """
    b, (s, _, _) = len(items), items[0].image.shape
    k = items[0].keypoints.shape[1]
    images = torch.empty((b, 3, s, s), dtype=torch.uint8)
    targets, ignore = [], []
    for i, it in enumerate(items):
        cv2.split(it.image, list(images[i].numpy()))  # HWC -> CHW straight into the batch (5x torch's copy)
        n = len(it.boxes)
        bx = it.boxes
        cxcywh = np.concatenate([(bx[:, :2] + bx[:, 2:]) / 2, bx[:, 2:] - bx[:, :2]], axis=1)
        targets.append(np.concatenate([np.full((n, 1), i), it.classes[:, None], cxcywh,
                                       it.keypoints.reshape(n, 3 * k)], axis=1))
        ignore.append(np.concatenate([np.full((len(it.crowd_boxes), 1), i), it.crowd_boxes], axis=1))
    return {"images": images,
            "targets": torch.from_numpy(np.concatenate(targets).astype(np.float32).reshape(-1, 6 + 3 * k)),
            "ignore": torch.from_numpy(np.concatenate(ignore).astype(np.float32).reshape(-1, 5)),
            "meta": [it.meta for it in items],
            "num_skipped": sum(it.num_skipped for it in items),
            "skipped_files": sorted({f for it in items for f in it.skipped_files})}


def single_thread_opencv() -> None:
    """Make OpenCV run single-threaded in this process, and so in the DataLoader workers it forks.

    Call it in the parent before workers start. With OpenCV 5.0, once the parent has used
    OpenCV's thread pool (e.g. while generating the synthetic dataset), ``cv2.setNumThreads`` called in a
    forked child deadlocks, so a worker must never call it; set in the parent, children inherit it.
    """
    cv2.setNumThreads(1)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader hook: a distinct, reproducible random stream per worker and rank."""
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, _Seeded):
        info.dataset.seed([info.seed, _rank()])
