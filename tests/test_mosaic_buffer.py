"""The mosaic buffer (one decode per item, partners are recent images with their own labels, nothing is mutated) and
the RAM cache of decoded images (each decoded once, within its budget, the same items)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from yolopose.data.augment import AugmentConfig
from yolopose.data.coco import CocoKeypoints
from yolopose.data.dataset import TrainDataset

NO_COLOUR = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, fliplr=0.0)


def _reader(people_coco, write_coco) -> CocoKeypoints:
    ann, images = write_coco(people_coco([(96, 128)] * 12, seed=3))
    return CocoKeypoints(ann, images)


def _count_loads(reader: CocoKeypoints) -> list[int]:
    """Make ``reader`` record the index of every image it decodes; returns the record."""
    loads: list[int] = []
    load = reader.load

    def counting_load(i: int, bgr: bool = False):
        loads.append(i)
        return load(i, bgr)

    reader.load = counting_load
    return loads


def test_an_item_decodes_one_image_and_mosaics_with_recent_ones(people_coco, write_coco) -> None:
    reader = _reader(people_coco, write_coco)
    loads = _count_loads(reader)
    ds = TrainDataset(reader, 128, AugmentConfig(**NO_COLOUR), mosaic_buffer=4)
    ds.seed(0)
    first = ds[0]
    assert len(loads) >= 1                                # the first item: partners from the split (empty buffer)
    for i in range(1, 12):
        before = len(loads)
        item = ds[i]
        assert len(loads) == before + 1 and loads[-1] == i   # one decode: its own image
        assert len(item.boxes) > 0
    assert len(ds._buffer) == 4 and [s.image_id for s in ds._buffer] == [reader.image_id(i) for i in range(8, 12)]
    assert first.image.shape == (128, 128, 3)


def test_buffered_samples_keep_their_labels(people_coco, write_coco) -> None:
    reader = _reader(people_coco, write_coco)
    ds = TrainDataset(reader, 128, AugmentConfig(degrees=10.0, shear=5.0), mosaic_buffer=8)
    ds.seed(1)
    for i in range(12):
        ds[i]
    for sample in ds._buffer:   # every reuse warped copies: the buffered labels are the file's
        fresh = reader.load(int(np.flatnonzero(reader.table.image_ids == sample.image_id)[0]), bgr=True)
        assert np.array_equal(sample.boxes, fresh.boxes) and np.array_equal(sample.keypoints, fresh.keypoints)
        assert np.array_equal(sample.image, fresh.image)


def test_without_a_buffer_partners_come_from_the_whole_split(people_coco, write_coco, tmp_path: Path) -> None:
    reader = _reader(people_coco, write_coco)
    a = TrainDataset(reader, 128, AugmentConfig(**NO_COLOUR), mosaic_buffer=0)
    b = TrainDataset(reader, 128, AugmentConfig(**NO_COLOUR))
    a.seed(5)
    b.seed(5)
    for i in range(6):   # the default is the former exact behaviour
        x, y = a[i], b[i]
        assert np.array_equal(x.image, y.image) and np.array_equal(x.keypoints, y.keypoints)


def test_the_ram_cache_decodes_once_and_changes_no_item(people_coco, write_coco) -> None:
    reader = _reader(people_coco, write_coco)
    loads = _count_loads(reader)
    cached = TrainDataset(reader, 128, AugmentConfig(), mosaic_buffer=4, cache_bytes=10**9)
    plain = TrainDataset(_reader(people_coco, write_coco), 128, AugmentConfig(), mosaic_buffer=4)
    cached.seed(2)
    plain.seed(2)
    for epoch in range(2):
        for i in range(12):
            a, b = cached[i], plain[i]
            assert np.array_equal(a.image, b.image) and np.array_equal(a.keypoints, b.keypoints)
    assert sorted(set(loads)) == list(range(12)) and len(set(loads)) == len(loads)   # each image decoded once


def test_the_ram_cache_stays_within_its_budget(people_coco, write_coco) -> None:
    reader = _reader(people_coco, write_coco)
    one = 96 * 128 * 3
    ds = TrainDataset(reader, 128, AugmentConfig(), cache_bytes=5 * one)
    ds.seed(0)
    for i in range(12):
        ds[i]
    assert len(ds._cache) == 5 and ds._cached_bytes == 5 * one


def test_cache_auto_caches_a_split_that_fits(people_coco, write_coco) -> None:
    from yolopose.data.datamodule import PoseDataModule

    ann, images = write_coco(people_coco([(96, 128)] * 12, seed=3))
    kw = dict(format="coco", train_ann=str(ann), train_images=str(images), val_ann=str(ann), val_images=str(images),
              image_size=128, num_workers=0)
    assert PoseDataModule(**kw).cache_bytes == 2 * 10**9                      # 12 x 37 kB: fits
    assert PoseDataModule(**kw, cache_gb=1e-5).cache_bytes == 0               # 10 kB budget: does not
    assert PoseDataModule(**kw, cache="none").cache_bytes == 0
    assert PoseDataModule(**kw, cache="ram", cache_gb=1e-5).cache_bytes == 10**4
    assert PoseDataModule(**{**kw, "num_workers": 4}, cache="ram", cache_gb=1e-5).cache_bytes == 2500   # a share each
    assert PoseDataModule(**{**kw, "num_workers": 4}, cache_gb=0.0006).cache_bytes == 0   # the split > a share
