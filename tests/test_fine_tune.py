"""``--model.init_from`` (fine-tuning from a yolopose checkpoint, across K) and ``--model.freeze_backbone_epochs``,
through the real ``train.py`` command line on tiny K = 5 data the tests write (noise images, a ~0.2 M model)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from yolopose.checkpoint import CheckpointError, init_weights_from, read_checkpoint
from yolopose.cli import main
from yolopose.module import PoseModule
from yolopose.nn.model import YOLOPose

import tiny_run

pytestmark = pytest.mark.slow
TINY = {"variant": "n", "width": 0.125, "kpt_head_depth": 1}


def save_checkpoint(path: Path, num_keypoints: int, seed: int, **model: object) -> dict:
    """A yolopose checkpoint of a random tiny model (the layout Lightning writes), EMA weights = 0.98 x raw."""
    torch.manual_seed(seed)
    module = PoseModule(num_keypoints=num_keypoints, **{**TINY, **model})
    with torch.no_grad():
        for p in module.ema.module.parameters():
            p.mul_(0.98)         # tell the EMA copy apart from the raw weights
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return module.state_dict()


def test_k17_checkpoint_initialises_backbone_neck_and_box_head_of_a_k5_model(tmp_path: Path) -> None:
    saved = save_checkpoint(tmp_path / "k17.ckpt", 17, seed=0)
    torch.manual_seed(1)
    model = YOLOPose(num_keypoints=5, **TINY)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report, _ = init_weights_from(model, tmp_path / "k17.ckpt")
    assert "\n" not in report and "EMA weights" in report and "K=17" in report
    assert "head.kpt.0.1" in report                      # the K-sized prediction conv of level 0: fresh
    after = model.state_dict()
    for name, value in after.items():
        if name.startswith(("backbone.", "neck.", "head.det.")) and not name.endswith("num_batches_tracked"):
            assert torch.equal(value, saved["ema.module." + name]), name            # copied from the EMA
        if re.match(r"head\.kpt\.\d+\.1\.", name):                                # out = A * 3K: fresh
            assert torch.equal(value, fresh[name]), name
    assert torch.equal(after["anchors"], fresh["anchors"])                          # configuration, not weights
    # the keypoint branch's depthwise block (K-free shapes) is copied too
    assert torch.equal(after["head.kpt.0.0.conv.weight"], saved["ema.module.head.kpt.0.0.conv.weight"])


def test_checkpoint_of_another_variant_is_a_clear_error(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "s.ckpt", 5, seed=0, width=0.25)
    with pytest.raises(CheckpointError, match=r"s.ckpt: no layer of the checkpoint .* fits this model"):
        init_weights_from(YOLOPose(num_keypoints=5, **TINY), tmp_path / "s.ckpt")


def tiny_config(tmp: Path, write_coco, people_coco, **model: object) -> Path:
    sizes = [(96, 128), (128, 96), (112, 112), (100, 140)]
    (train_ann, train_images), (val_ann, val_images) = (write_coco(people_coco(sizes, seed=1), "train"),
                                                        write_coco(people_coco(sizes[:2], seed=2), "val"))
    cfg = {"seed_everything": 0,
           "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "default_root_dir": str(tmp / "run"),
                       "enable_progress_bar": False, "num_sanity_val_steps": 0, "log_every_n_steps": 1,
                       "enable_checkpointing": True},
           "model": {**TINY, "warmup_min_steps": 1, "ema_tau": 5.0, "lr": 0.02, **model},
           "data": {"format": "coco", "train_ann": str(train_ann), "train_images": str(train_images),
                    "val_ann": str(val_ann), "val_images": str(val_images), "image_size": 128, "batch_size": 2,
                    "num_workers": 0}}
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def last_checkpoint(tmp: Path) -> dict:
    return read_checkpoint(next((tmp / "run").glob("lightning_logs/version_*/checkpoints/last.ckpt")))


def test_fit_with_init_from_across_k_trains_and_reports(tmp_path: Path, write_coco, people_coco, one_thread,
                                                        capsys: pytest.CaptureFixture, caplog) -> None:
    saved = save_checkpoint(tmp_path / "k17.ckpt", 17, seed=0)
    config = tiny_config(tmp_path, write_coco, people_coco, init_from=str(tmp_path / "k17.ckpt"),
                         freeze_backbone_epochs=1)
    main(["fit", "--config", str(config)])
    logged = capsys.readouterr().out + capsys.readouterr().err + caplog.text
    assert "init_from" in logged and "loaded" in logged and "freshly initialised" in logged
    state = last_checkpoint(tmp_path)["state_dict"]
    assert state["model.head.kpt.0.1.weight"].shape[0] == 3 * 3 * 5               # a K = 5 model was trained
    # frozen for the whole (single) epoch: the backbone, BatchNorm statistics included, is the checkpoint's EMA
    for name, value in state.items():
        if name.startswith("model.backbone.") and value.is_floating_point():
            assert torch.equal(value, saved["ema.module." + name[len("model."):]]), name
    moved = [n for n in state if n.startswith("model.neck.") and n.endswith("conv.weight")
             and not torch.equal(state[n], saved["ema.module." + n[len("model."):]])]
    assert moved, "the neck was trained"


def test_without_freeze_the_backbone_trains(tmp_path: Path, write_coco, people_coco, one_thread) -> None:
    saved = save_checkpoint(tmp_path / "k5.ckpt", 5, seed=0)
    main(["fit", "--config", str(tiny_config(tmp_path, write_coco, people_coco, init_from=str(tmp_path / "k5.ckpt")))])
    state = last_checkpoint(tmp_path)["state_dict"]
    assert not torch.equal(state["model.backbone.stem.conv.weight"], saved["ema.module.backbone.stem.conv.weight"])


def test_init_from_nothing_that_fits_stops_with_one_line(tmp_path: Path, write_coco, people_coco,
                                                         capsys: pytest.CaptureFixture) -> None:
    save_checkpoint(tmp_path / "wide.ckpt", 5, seed=0, width=0.25)
    config = tiny_config(tmp_path, write_coco, people_coco, init_from=str(tmp_path / "wide.ckpt"))
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(config)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "wide.ckpt" in err and "fits this model" in err


def test_a_detector_run_leaves_the_keypoint_branch_at_its_init_and_init_from_leaves_it_fresh(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start: dict = {}

    def on_train_start(self: PoseModule) -> None:
        start.update({k: v.clone() for k, v in self.model.state_dict().items()})

    monkeypatch.setattr(PoseModule, "on_train_start", on_train_start)
    # Detector first with a weight decay so high that 6 steps would shrink any decayed weight visibly.
    main(["fit", "--config", str(tiny_run.tiny_config(tmp_path, cache)), "--trainer.max_steps", "6",
          "--model.kpt_weight", "0", "--model.kpt_conf_weight", "0", "--model.optimizer", "sgd",
          "--model.lr", "0.05", "--model.weight_decay", "20", "--model.warmup_min_steps", "0",
          "--model.warmup_epochs", "0"])
    path = tiny_run.run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(path)
    assert ckpt["global_step"] == 6 and ckpt["yolopose_untrained"] == ["head.kpt"]
    trained = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    kpt = [k for k in trained if k.startswith("head.kpt.") and trained[k].is_floating_point()
           and "running_" not in k]
    assert kpt and all(torch.equal(trained[k], start[k]) for k in kpt)          # no update, no decay
    assert not torch.equal(trained["head.det.0.weight"], start["head.det.0.weight"])  # the detector trained
    # The pose run that starts from it: the detector is copied, the never-trained keypoint branch is not.
    torch.manual_seed(3)
    model = YOLOPose(num_keypoints=17, **TINY)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report, copied = init_weights_from(model, path)
    assert "head.kpt never trained in the checkpoint: left fresh" in report
    assert copied and not any(layer.startswith("head.kpt") for layer in copied)
    after = model.state_dict()
    assert all(torch.equal(after[k], fresh[k]) for k in after if k.startswith("head.kpt."))
    assert torch.equal(after["head.det.0.weight"], ckpt["state_dict"]["ema.module.head.det.0.weight"])
