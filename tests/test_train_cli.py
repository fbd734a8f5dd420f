"""The real ``train.py`` command line, end to end, on a tiny synthetic dataset and a tiny model."""
from __future__ import annotations

import copy
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from yolopose.checkpoint import read_checkpoint
from yolopose.cli import main
from yolopose.module import PoseModule

from tiny_run import ROOT, TINY_DATA, run_dir, tiny_config, train_subprocess

pytestmark = pytest.mark.slow


def test_fast_dev_run(tmp_path: Path, cache: Path) -> None:
    main(["fit", "--config", str(tiny_config(tmp_path, cache)), "--trainer.fast_dev_run", "2"])


def test_one_epoch_writes_checkpoints_predictions_and_metrics_that_rescore_offline(tmp_path: Path,
                                                                                  cache: Path) -> None:
    main(["fit", "--config", str(tiny_config(tmp_path, cache, max_epochs=2))])
    out = run_dir(tmp_path)
    ckpts = {p.name for p in (out / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("best-epoch") for n in ckpts), ckpts
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epoch"] == 1 and metrics["images"] == TINY_DATA["num_val"]
    for name in ("kpt_AP", "kpt_AP50", "kpt_AP75", "kpt_APm", "kpt_APl", "kpt_AR", "box_AP", "box_AP50"):
        assert 0.0 <= metrics[name] <= 1.0 and 0.0 <= metrics[name + "_labelled_imgs"] <= 1.0
    records = json.loads((out / "predictions.json").read_text())
    assert records, "an untrained model still outputs low-confidence detections at conf 0.001"
    # Anyone can rescore predictions.json with pycocotools against the val annotations: same numbers.
    val_ann = next(cache.glob("synthetic-*/val.json"))
    coco = COCO(str(val_ann))
    for iou_type, names in (("keypoints", ("kpt_AP", "kpt_AR")), ("bbox", ("box_AP", "box_AP50"))):
        ev = COCOeval(coco, coco.loadRes(str(out / "predictions.json")), iou_type)
        ev.evaluate(), ev.accumulate(), ev.summarize()
        stat = {"kpt_AP": 0, "kpt_AR": 5, "box_AP": 0, "box_AP50": 1}
        for name in names:
            assert metrics[name] == pytest.approx(max(ev.stats[stat[name]], 0.0), abs=1e-9), name
    # Predictions are in original image pixels: inside (or at the edge of) their image.
    sizes = {im["id"]: (im["width"], im["height"]) for im in json.loads(val_ann.read_text())["images"]}
    for r in records:
        x, y, w, h = r["bbox"]
        assert -0.01 <= x and -0.01 <= y and x + w <= sizes[r["image_id"]][0] + 0.01
        assert y + h <= sizes[r["image_id"]][1] + 0.01
    # TensorBoard got the loss parts, the LR, the AP metrics, and the hyperparameters.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(out))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for tag in ("train/loss", "train/box", "train/obj", "train/kpt", "train/kpt_conf", "train/lr",
                "val/kpt_AP", "val/kpt_AP50", "val/box_AP", "val/kpt_AP_labelled_imgs"):
        assert tag in tags, tag
    assert (out / "hparams.yaml").is_file() and "variant" in (out / "hparams.yaml").read_text()


def test_checkpoint_loads_without_config_and_validate_reproduces_the_metrics(tmp_path: Path, cache: Path) -> None:
    config = tiny_config(tmp_path, cache)
    main(["fit", "--config", str(config)])
    out = run_dir(tmp_path)
    best = next((out / "checkpoints").glob("best-epoch*.ckpt"))
    module = PoseModule.load_from_checkpoint(best, map_location="cpu")  # no config needed
    assert module.hparams.num_keypoints == 17 and module.hparams.width == 0.125
    assert module.ema is not None and int(module.ema.updates) > 0
    fit_metrics = json.loads((out / "metrics.json").read_text())
    main(["validate", "--config", str(config), "--ckpt_path", str(best)])
    val_metrics = json.loads((run_dir(tmp_path) / "metrics.json").read_text())
    for name in ("kpt_AP", "box_AP", "box_AP50", "kpt_AR"):
        assert val_metrics[name] == pytest.approx(fit_metrics[name], abs=1e-9), name
    fit_records = json.loads((out / "predictions.json").read_text())
    val_records = json.loads((run_dir(tmp_path) / "predictions.json").read_text())
    assert len(val_records) == len(fit_records)


def test_resume_from_last_restores_epoch_step_ema_and_optimizer(tmp_path: Path, cache: Path) -> None:
    config = tiny_config(tmp_path, cache)
    main(["fit", "--config", str(config)])
    first = read_checkpoint(run_dir(tmp_path) / "checkpoints" / "last.ckpt")
    steps = first["global_step"]
    assert steps > 0 and first["optimizer_states"]
    main(["fit", "--config", str(config), "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    second = read_checkpoint(run_dir(tmp_path) / "checkpoints" / "last.ckpt")
    assert second["epoch"] == 1 and second["global_step"] == 2 * steps
    # The EMA kept counting from where it was: it travelled in the checkpoint.
    assert int(second["state_dict"]["ema.updates"]) == 2 * int(first["state_dict"]["ema.updates"])
    # Resuming continues in the same log directory (TensorBoard curves carry on).
    assert len(list((tmp_path / "run" / "lightning_logs").glob("version_*"))) == 1


def test_resume_last_with_nothing_to_resume_starts_fresh(tmp_path: Path, cache: Path) -> None:
    main(["fit", "--config", str(tiny_config(tmp_path, cache)), "--ckpt_path", "last", "--trainer.max_steps", "1"])
    assert (run_dir(tmp_path) / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("override, message", [
    (["--data.format", "coco", "--data.train_ann", "missing/train.json", "--data.train_images", "missing",
      "--data.val_ann", "missing/val.json", "--data.val_images", "missing"], "does not exist"),
    (["--data.image_size", "100"], "multiple of 64"),
])
def test_bad_config_is_a_one_line_error_before_training(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture,
                                                        override: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(tiny_config(tmp_path, cache)), *override])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (tmp_path / "run").exists()


def test_unknown_variant_is_rejected_before_training(tmp_path: Path, cache: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(tiny_config(tmp_path, cache)), "--model.variant", "q"])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "variant" in err and "'q'" in err or '"q"' in err or " q" in err
    assert not (tmp_path / "run").exists()


def test_checkpoint_with_other_k_is_rejected(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture) -> None:
    other = PoseModule(variant="n", width=0.125, num_keypoints=5, kpt_head_depth=1)
    path = tmp_path / "k5.ckpt"
    torch.save({"hyper_parameters": dict(other.hparams), "state_dict": other.state_dict()}, path)
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--config", str(tiny_config(tmp_path, cache)), "--ckpt_path", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "K=5" in err and "K=17" in err and str(path) in err


@pytest.mark.parametrize(("model_args", "fit_args"), [
    ([], []),
    # No EMA, and BatchNorm statistics recomputed on each rank's own batches before validation: the ranks
    # must still evaluate the network the checkpoint saves (rank 0's). Lightning runs validation_step
    # through the DDP wrapper, whose forward broadcasts rank 0's buffers; this guards that path.
    (["--model.ema_decay", "0"], ["--trainer.callbacks+=yolopose.callbacks.PreciseBatchNorm"]),
], ids=["ema", "no-ema-precise-bn"])
def test_ddp_two_cpu_processes_match_single_process_validation(tmp_path: Path, cache: Path, model_args: list[str],
                                                               fit_args: list[str]) -> None:
    config = tiny_config(tmp_path, cache)
    result = train_subprocess(["fit", "--config", str(config), "--trainer.strategy", "ddp",
                               "--trainer.devices", "2", "--trainer.accelerator", "cpu", *model_args, *fit_args])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = run_dir(tmp_path)
    ddp_metrics = json.loads((out / "metrics.json").read_text())
    ddp_records = json.loads((out / "predictions.json").read_text())
    assert ddp_metrics["images"] == TINY_DATA["num_val"]
    assert {r["image_id"] for r in ddp_records} <= set(range(1, TINY_DATA["num_val"] + 1))
    best = next((out / "checkpoints").glob("best-epoch*.ckpt"))
    # Lightning runs each of the 2 CPU ranks on 1 thread; so does this check, because another thread
    # count changes the last bits of the convolutions, which reorders the untrained model's tied scores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["validate", "--config", str(config), "--ckpt_path", str(best), *model_args])
    finally:
        torch.set_num_threads(threads)
    single = run_dir(tmp_path)
    single_metrics = json.loads((single / "metrics.json").read_text())
    single_records = json.loads((single / "predictions.json").read_text())

    def key(r: dict) -> tuple:
        return r["image_id"], round(r["score"], 3), tuple(round(v, 1) for v in r["bbox"])

    # Gathered across the two ranks: no image lost, none duplicated by the padded sampler.
    assert sorted(map(key, ddp_records)) == sorted(map(key, single_records))
    for name in ("kpt_AP", "box_AP", "box_AP50", "kpt_AR"):
        assert ddp_metrics[name] == pytest.approx(single_metrics[name], abs=1e-6), name


# A checkpoint write made slow on purpose: the bytes go to the open file 64 kB at a time, 0.1 s apart.
SLOW_SAVE = """
import io, sys, time
import torch

_save = torch.save


def slow_save(obj, f, *args, **kwargs):
    if not hasattr(f, "write") or isinstance(f, io.BytesIO):
        return _save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    _save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    for i in range(0, len(data), 1 << 16):
        f.write(data[i:i + (1 << 16)])
        f.flush()
        time.sleep(0.1)


torch.save = slow_save
from yolopose.cli import main
main(sys.argv[1:])
"""


def _write_in_progress(folder: Path) -> bool:
    """``last.ckpt`` is being written into ``folder``: a temporary file named after it (not ``*.ckpt``) has bytes."""
    try:
        return any("last.ckpt" in p.name and not p.name.endswith(".ckpt") and p.stat().st_size > 0
                   for p in folder.iterdir())
    except FileNotFoundError:  # renamed into place between the listing and the stat
        return False


def test_sigkill_during_a_slow_checkpoint_write_leaves_a_loadable_last_ckpt(tmp_path: Path, cache: Path) -> None:
    config = tiny_config(tmp_path, cache, max_epochs=50)
    script = tmp_path / "slow_train.py"
    script.write_text(SLOW_SAVE)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), "fit", "--config", str(config)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and folder is None:
            for f in (tmp_path / "run").glob("lightning_logs/version_*/checkpoints"):
                if (f / "last.ckpt").is_file() and _write_in_progress(f):
                    folder = f  # a complete last.ckpt, and the next write of it half done
            time.sleep(0.02)
        assert folder is not None, "no checkpoint write seen in progress beside a last.ckpt within 5 minutes"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _write_in_progress(folder), "the kill was meant to land mid-write"
    for path in folder.glob("*.ckpt"):  # every file under a checkpoint's name is whole
        read_checkpoint(path)
    before = read_checkpoint(folder / "last.ckpt")
    result = train_subprocess(["fit", "--config", str(config), "--ckpt_path", "last",
                               "--trainer.max_epochs", str(before["epoch"] + 2)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming from {folder / 'last.ckpt'}" in result.stdout + result.stderr
    after = read_checkpoint(folder / "last.ckpt")
    assert after["global_step"] > before["global_step"] and after["epoch"] == before["epoch"] + 1
    # The temporary file the kill left was reused by the next write of last.ckpt and renamed into place.
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".ckpt")) == []


def test_resume_skips_an_unreadable_newest_candidate_and_restores_everything(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    config = tiny_config(tmp_path, cache)
    main(["fit", "--config", str(config)])
    folder = run_dir(tmp_path) / "checkpoints"
    older = read_checkpoint(folder / "last.ckpt")
    # Written after the best checkpoint acted on the epoch's validation: its bookkeeping names the file on disk.
    best = next(v for k, v in older["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert Path(best["best_model_path"]) == next(folder.glob("best-epoch*.ckpt"))
    # Newer than last.ckpt and cut at 100 kB, as a kill mid-write left it before writes were atomic.
    newest = folder / "last-v1.ckpt"
    newest.write_bytes((folder / "last.ckpt").read_bytes()[:100_000])
    later = (folder / "last.ckpt").stat().st_mtime + 60
    os.utime(newest, (later, later))

    seen: dict = {}
    step = PoseModule.optimizer_step

    def on_train_start(self: PoseModule) -> None:  # after Lightning restored the checkpoint
        seen.update(step=self.global_step, optimizer=copy.deepcopy(self.trainer.optimizers[0].state_dict()),
                    state={k: v.clone() for k, v in self.state_dict().items()})

    def optimizer_step(self: PoseModule, *args: object, **kwargs: object) -> None:
        step(self, *args, **kwargs)
        seen.setdefault("first_lr", (self.trainer.optimizers[0].param_groups[0]["lr"], self.schedule))

    monkeypatch.setattr(PoseModule, "on_train_start", on_train_start)
    monkeypatch.setattr(PoseModule, "optimizer_step", optimizer_step)
    with caplog.at_level(logging.WARNING, logger="yolopose"):
        main(["fit", "--config", str(config), "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    warned = [r.getMessage() for r in caplog.records if "last-v1.ckpt" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0] and "not a readable yolopose checkpoint" in warned[0], warned
    # Resumed from the older, intact last.ckpt with everything restored.
    assert seen["step"] == older["global_step"] > 0
    saved = older["optimizer_states"][0]["state"]
    assert saved and seen["optimizer"]["state"].keys() == saved.keys()
    for i, state in saved.items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(seen["optimizer"]["state"][i][name]), torch.as_tensor(value)), name
    ema = [k for k in older["state_dict"] if k.startswith("ema.")]
    assert ema and "ema.updates" in ema
    for name, value in older["state_dict"].items():
        assert torch.equal(seen["state"][name], value), name
    lr, schedule = seen["first_lr"]  # the schedule carried on from the restored step, no new warm-up
    assert lr == pytest.approx(schedule.at(older["global_step"], is_bias=False)[0])
    assert lr != pytest.approx(schedule.at(0, is_bias=False)[0])
    after = read_checkpoint(folder / "last.ckpt")
    assert after["epoch"] == 1 and after["global_step"] == 2 * older["global_step"]
    assert len(list((tmp_path / "run" / "lightning_logs").glob("version_*"))) == 1


def test_resume_stops_with_the_newest_error_when_no_candidate_reads(tmp_path: Path, cache: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(tiny_config(tmp_path, cache)), "--ckpt_path", "last"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {folder / 'last.ckpt'}: not a readable yolopose checkpoint"), err


def test_one_last_ckpt_every_n_steps_at_every_validation_and_at_the_end(tmp_path: Path, cache: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[tuple[str, int, str]] = []
    save = pl.Trainer.save_checkpoint

    def recording(self: pl.Trainer, filepath: str | Path, *args: object, **kwargs: object) -> None:
        save(self, filepath, *args, **kwargs)
        writes.append((Path(filepath).name, self.global_step, type(self.strategy.checkpoint_io).__name__))

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", recording)
    # 6 steps per epoch; validation after steps 3 and 6; last.ckpt also every 4 steps; fit stops at step 7.
    args = ["fit", "--config", str(tiny_config(tmp_path, cache)), "--trainer.max_epochs", "2",
            "--trainer.val_check_interval", "3", "--last_checkpoint.every_n_train_steps", "4"]
    main([*args, "--trainer.max_steps", "7"])
    assert [s for name, s, _ in writes if name == "last.ckpt"] == [3, 4, 6, 7]
    assert {io for _, _, io in writes} == {"AtomicCheckpointIO"}  # every writer, the best one too
    folder = run_dir(tmp_path) / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert "last.ckpt" in names and all(n == "last.ckpt" or n.startswith("best-epoch") for n in names), names
    final = read_checkpoint(folder / "last.ckpt")
    assert final["global_step"] == 7 and final["epoch"] == 1  # the final step, 1 batch into the 2nd epoch
    # A finished run continues exactly where it stopped: steps 8 and 9 are the 2nd epoch's batches 2 and 3.
    main([*args, "--trainer.max_steps", "9", "--ckpt_path", "last"])
    more = read_checkpoint(folder / "last.ckpt")
    assert more["global_step"] == 9 and more["epoch"] == 1


@pytest.mark.parametrize("override, message", [
    (["--checkpoint.save_last", "true"], "checkpoint.save_last: last.ckpt has one writer"),
    (["--last_checkpoint.every_n_train_steps", "-1"], "last_checkpoint.every_n_train_steps must be >= 0"),
], ids=["second-writer", "negative-interval"])
def test_bad_checkpoint_settings_are_config_errors(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture,
                                                    override: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(tiny_config(tmp_path, cache)), *override])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()
