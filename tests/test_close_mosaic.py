"""``data.close_mosaic_epochs``: the run's last N epochs train on single images, in loader workers too, and a run
resumed in that phase stays in it."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from yolopose.cli import main
from yolopose.data.augment import TrainAugment
from yolopose.data.datamodule import PoseDataModule
from yolopose.data.sample import DatasetError
from yolopose.module import PoseModule
from yolopose.synthetic import SyntheticConfig

from tiny_run import TINY_DATA, tiny_config



def _data(cache: Path, **kwargs: object) -> PoseDataModule:
    return PoseDataModule(format="synthetic", synthetic=SyntheticConfig(root=str(cache), **TINY_DATA), image_size=128,
                          batch_size=4, num_workers=0, **kwargs)


def _trainer(epoch: int = 0, max_epochs: int = 10, max_steps: int = -1) -> SimpleNamespace:
    return SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs, max_steps=max_steps, world_size=1,
                           limit_train_batches=1.0, accumulate_grad_batches=1)


def test_last_epochs_of_the_run_are_without_mosaic(cache: Path) -> None:
    data = _data(cache, close_mosaic_epochs=3)
    data.trainer = _trainer(max_epochs=10)
    assert [data.mosaic_at(e) for e in range(10)] == [True] * 7 + [False] * 3
    data.trainer = _trainer(max_epochs=-1, max_steps=12)   # 24 images / batch 4 = 6 steps an epoch: 2 epochs
    assert [data.mosaic_at(e) for e in range(2)] == [False, False]
    assert _data(cache).mosaic_at(5) and not _data(cache, mosaic=0.0).mosaic_at(0)
    with pytest.raises(DatasetError, match="close_mosaic_epochs"):
        _data(cache, close_mosaic_epochs=-1)


def _sources_per_item(loader: torch.utils.data.DataLoader) -> list[int]:
    """How many source images each item of one pass over ``loader`` was planned from (4: a mosaic)."""
    counts = []
    for batch in loader:
        counts += [int(m["sources"]) for m in batch["meta"]]
    return counts


@pytest.mark.parametrize("workers", [0, 2])
def test_the_switch_reaches_persistent_loader_workers(cache: Path, workers: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    apply = TrainAugment.apply

    def apply_and_tag(self: TrainAugment, plan: object, samples: list, bgr: bool = False) -> object:
        item = apply(self, plan, samples, bgr)
        item.meta["sources"] = len(plan.matrices)
        return item

    monkeypatch.setattr(TrainAugment, "apply", apply_and_tag)
    data = _data(cache, close_mosaic_epochs=1)
    data.num_workers = workers
    data.trainer = _trainer(epoch=0, max_epochs=2)
    loader = data.train_dataloader()
    assert set(_sources_per_item(loader)) == {4}
    data.start_epoch(1)                                  # what PoseModule.on_train_epoch_start does
    assert set(_sources_per_item(loader)) == {1}


@pytest.mark.parametrize("stop", [5, 4])
def test_a_run_resumed_in_the_last_epochs_stays_without_mosaic(tmp_path: Path, cache: Path, stop: int,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """3 epochs of 2 steps, the last without mosaic; stopped after step 5 (epoch 2, mid-epoch: Lightning runs no
    epoch-start hook when it resumes) or step 4 (the end of epoch 1) and resumed: the resumed steps of epoch 2
    must see single images."""
    seen: list[int] = []
    apply = TrainAugment.apply

    def apply_and_record(self: TrainAugment, plan: object, samples: list, bgr: bool = False) -> object:
        seen.append(len(plan.matrices))
        return apply(self, plan, samples, bgr)

    current = {"stop": stop}
    step = PoseModule.training_step

    def training_step(self: PoseModule, *args: object, **kwargs: object) -> object:
        if self.global_step == current["stop"]:
            raise RuntimeError("stopped by the test")       # on_exception writes last.ckpt at this step
        return step(self, *args, **kwargs)

    monkeypatch.setattr(TrainAugment, "apply", apply_and_record)
    monkeypatch.setattr(PoseModule, "training_step", training_step)
    config = tiny_config(tmp_path, cache, max_epochs=3, limit_train_batches=2, limit_val_batches=1)
    args = ["fit", "--config", str(config), "--data.close_mosaic_epochs", "1"]
    with pytest.raises(RuntimeError, match="stopped by the test"):
        main(args)
    first = list(seen)
    assert len(first) >= 4 * stop and set(first[:16]) == {4} and set(first[16:]) <= {1}
    seen.clear()
    current["stop"] = None
    main([*args, "--ckpt_path", "last"])
    assert len(seen) == 4 * (6 - stop) and set(seen) == {1}
