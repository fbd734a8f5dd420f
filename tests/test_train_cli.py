"""The real ``train.py`` command line, end to end, on a tiny synthetic dataset and a tiny model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from yolopose.checkpoint import read_checkpoint
from yolopose.cli import main
from yolopose.data.synthetic import SyntheticConfig, ensure_synthetic_dataset
from yolopose.module import PoseModule

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

TINY_DATA = {"num_train": 24, "num_val": 8, "image_size": 160, "max_people": 3}


def tiny_config(tmp: Path, cache: Path, **trainer: object) -> Path:
    """A config for a ~0.2 M parameter model on 128 px inputs: seconds per epoch on a CPU."""
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "default_root_dir": str(tmp / "run"),
                    "enable_progress_bar": False, "num_sanity_val_steps": 0, "log_every_n_steps": 1, **trainer},
        "model": {"variant": "n", "width": 0.125, "kpt_head_depth": 1, "warmup_min_steps": 2, "ema_tau": 5.0},
        "data": {"format": "synthetic", "synthetic": {"root": str(cache), **TINY_DATA}, "image_size": 128,
                 "batch_size": 4, "num_workers": 0},
        "last_checkpoint": {"every_n_train_steps": 2},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    ensure_synthetic_dataset(SyntheticConfig(root=str(root), **TINY_DATA))
    return root


def run_dir(tmp: Path) -> Path:
    """The newest ``version_N`` log directory of a run."""
    return sorted((tmp / "run" / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]


def train_subprocess(args: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, **kwargs)


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
        assert 0.0 <= metrics[name] <= 1.0
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
                "val/kpt_AP", "val/kpt_AP50", "val/box_AP"):
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


def test_unknown_variant_is_rejected_before_training(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture) -> None:
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


def test_sigkill_mid_epoch_then_resume_from_last(tmp_path: Path, cache: Path) -> None:
    config = tiny_config(tmp_path, cache, max_epochs=50)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        last = None
        while time.time() < deadline:
            found = list((tmp_path / "run").glob("lightning_logs/version_*/checkpoints/last.ckpt"))
            if found and read_checkpoint(found[0])["global_step"] >= 6:
                last = found[0]
                break
            time.sleep(0.5)
        assert last is not None, "no last.ckpt written within 5 minutes"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = read_checkpoint(last)  # a readable checkpoint survived the kill
    result = train_subprocess(["fit", "--config", str(config), "--ckpt_path", "last",
                               "--trainer.max_epochs", str(before["epoch"] + 2)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    after = read_checkpoint(run_dir(tmp_path) / "checkpoints" / "last.ckpt")
    assert after["global_step"] > before["global_step"] and after["epoch"] == before["epoch"] + 1
