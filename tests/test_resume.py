"""A run does what its flags say: ``--ckpt_path last`` resumes where it stopped, wherever last.ckpt is written,
whichever logger folder the run had and however it was stopped (max_time, SIGTERM, Ctrl-C, an exception);
the warm-up and the decay follow the run's real length."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from yolopose.checkpoint import read_checkpoint
from yolopose.cli import main
from yolopose.module import PoseModule

from tiny_run import ROOT, tiny_config, train_subprocess

pytestmark = pytest.mark.slow
TRAINING_STEP = PoseModule.training_step


def record_steps(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None,
                 error: type[BaseException] = RuntimeError, sleep: float = 0.0) -> dict:
    """Patch ``PoseModule`` to record the step it starts training at and every step it trains; raise ``error``
    in the training step that would make step ``fail_at + 1`` (so ``fail_at`` steps are complete)."""
    seen: dict = {"start": None, "steps": []}

    def on_train_start(self: PoseModule) -> None:
        seen["start"] = self.global_step

    def training_step(self: PoseModule, *args: object, **kwargs: object) -> object:
        if fail_at is not None and self.global_step == fail_at:
            raise error("stopped by the test")
        time.sleep(sleep)
        seen["steps"].append(self.global_step + 1)
        return TRAINING_STEP(self, *args, **kwargs)

    monkeypatch.setattr(PoseModule, "on_train_start", on_train_start)
    monkeypatch.setattr(PoseModule, "training_step", training_step)
    return seen


@pytest.mark.parametrize("flag", ["last_checkpoint.dirpath", "checkpoint.dirpath"])
def test_resume_finds_last_ckpt_in_the_folder_the_run_writes_it_to(tmp_path: Path, cache: Path, flag: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "volume" / "ckpts"  # e.g. a mounted volume, outside default_root_dir
    config = tiny_config(tmp_path, cache, max_epochs=-1)
    args = ["fit", "--config", str(config), f"--{flag}", str(folder)]
    main([*args, "--trainer.max_steps", "4"])
    assert read_checkpoint(folder / "last.ckpt")["global_step"] == 4
    seen = record_steps(monkeypatch)
    main([*args, "--trainer.max_steps", "8", "--ckpt_path", "last"])
    assert seen["start"] == 4 and seen["steps"] == [5, 6, 7, 8]
    assert read_checkpoint(folder / "last.ckpt")["global_step"] == 8


def test_resume_continues_in_the_checkpoints_own_logger_folder(tmp_path: Path, cache: Path) -> None:
    config = tiny_config(tmp_path, cache)
    named = tmp_path / "named.yaml"
    named.write_text(yaml.safe_dump({"trainer": {"logger": {
        "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(tmp_path / "run"), "name": "exp_a"}}}}))
    main(["fit", "--config", str(config), "--config", str(named)])    # run A: exp_a/version_0
    main(["fit", "--config", str(config)])                             # run B: lightning_logs/version_0
    a = tmp_path / "run" / "exp_a" / "version_0" / "checkpoints"
    b = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints"
    b_before = (b / "last.ckpt").read_bytes()
    later = time.time() + 60
    os.utime(a / "last.ckpt", (later, later))                          # A's last.ckpt is the newest
    # Resumed with this command's default logger: A continues in exp_a/version_0, B is untouched.
    main(["fit", "--config", str(config), "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert (b / "last.ckpt").read_bytes() == b_before
    assert sorted(p.name for p in b.parent.parent.iterdir()) == ["version_0"]
    resumed = read_checkpoint(a / "last.ckpt")
    assert resumed["epoch"] == 1 and resumed["yolopose_run"]["name"] == "exp_a"
    # The best checkpoint's bookkeeping came back (same folder), so it still keeps one best file, in A's folder.
    best = next(v for k, v in resumed["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert best["best_model_score"] is not None and len(best["best_k_models"]) == 1
    assert Path(best["best_model_path"]).parent == a and len(list(a.glob("best-epoch*.ckpt"))) == 1
    assert len(list((a.parent / ".").glob("events.out.tfevents.*"))) == 2  # one per process, same folder


def test_max_time_writes_the_step_it_stopped_at_and_resumes_mid_epoch(tmp_path: Path, cache: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(tmp_path, cache, max_epochs=50)
    args = ["fit", "--config", str(config), "--last_checkpoint.every_n_train_steps", "0",
            "--trainer.check_val_every_n_epoch", "100"]
    seen = record_steps(monkeypatch, sleep=0.3)
    main([*args, "--trainer.max_time", "00:00:00:03"])
    stopped = seen["steps"][-1]
    last = next((tmp_path / "run").glob("lightning_logs/version_0/checkpoints/last.ckpt"))
    assert read_checkpoint(last)["global_step"] == stopped
    if stopped % 6 == 0:
        pytest.skip("max_time happened to stop at an epoch's end (6 steps per epoch)")
    seen = record_steps(monkeypatch)
    main([*args, "--ckpt_path", "last", "--trainer.max_steps", str(stopped + 2)])
    assert seen["start"] == stopped and seen["steps"] == [stopped + 1, stopped + 2]
    after = read_checkpoint(last)
    assert after["global_step"] == stopped + 2 and after["epoch"] == (stopped + 1) // 6  # the same epoch went on


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError], ids=["ctrl-c", "exception"])
def test_ctrl_c_or_an_exception_writes_last_ckpt_at_the_last_completed_step(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]) -> None:
    config = tiny_config(tmp_path, cache, max_epochs=5)
    args = ["fit", "--config", str(config), "--last_checkpoint.every_n_train_steps", "0"]
    record_steps(monkeypatch, fail_at=9, error=error)  # epoch 1, batch 3: nothing wrote step 9 on a schedule
    with pytest.raises(SystemExit if error is KeyboardInterrupt else error):
        main(args)
    last = next((tmp_path / "run").glob("lightning_logs/version_0/checkpoints/last.ckpt"))
    assert read_checkpoint(last)["global_step"] == 9
    seen = record_steps(monkeypatch)
    main([*args, "--ckpt_path", "last", "--trainer.max_steps", "11"])
    assert seen["start"] == 9 and seen["steps"] == [10, 11]


# train.py with a training step slowed to 0.1 s that writes how many steps are complete into STEPS_FILE.
SLOW_STEPS = """
import os, sys, time
from pathlib import Path
from yolopose.module import PoseModule

_step = PoseModule.training_step


def training_step(self, *args, **kwargs):
    Path(os.environ["STEPS_FILE"]).write_text(str(self.global_step))
    time.sleep(0.1)
    return _step(self, *args, **kwargs)


PoseModule.training_step = training_step
from yolopose.cli import main
main(sys.argv[1:])
"""


def test_sigterm_writes_last_ckpt_at_the_current_step_and_the_run_resumes(tmp_path: Path, cache: Path) -> None:
    config = tiny_config(tmp_path, cache, max_epochs=50)
    script, steps = tmp_path / "slow_steps.py", tmp_path / "steps.txt"
    script.write_text(SLOW_STEPS)
    args = ["fit", "--config", str(config), "--last_checkpoint.every_n_train_steps", "0"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT), "STEPS_FILE": str(steps)}
    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and int(steps.read_text() or 0 if steps.exists()
                                                                     else 0) < 8:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # mid-epoch 1 (6 steps per epoch): no schedule writes this step
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, out[-3000:]
    assert "SIGTERM at step" in out and "continue with --ckpt_path last" in out
    last = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    stopped = read_checkpoint(last)["global_step"]
    assert stopped >= 8 and stopped % 6 != 0, stopped
    result = train_subprocess([*args, "--ckpt_path", "last", "--trainer.max_steps", str(stopped + 2)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming from {last}" in result.stdout + result.stderr
    after = read_checkpoint(last)
    assert after["global_step"] == stopped + 2
    assert int(after["state_dict"]["ema.updates"]) == stopped + 2  # the EMA went on from the SIGTERM step


@pytest.mark.parametrize(("flags", "total", "warmup"), [
    (["--trainer.max_epochs=-1", "--trainer.max_steps", "40"], 40, 6),        # max_steps alone: not all warm-up
    (["--trainer.max_epochs", "10", "--trainer.max_steps", "20"], 20, 6),     # max_steps cuts a longer config
    (["--trainer.max_epochs", "10"], 60, 6),
    (["--trainer.max_epochs=-1", "--trainer.max_steps", "40", "--trainer.accumulate_grad_batches", "4"], 40, 2),
], ids=["max-steps-only", "max-steps-under-max-epochs", "max-epochs", "accumulation"])
def test_warmup_is_measured_in_epochs_of_steps_and_the_decay_spans_the_real_run(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], total: int,
        warmup: int) -> None:
    seen = {}

    def on_train_start(self: PoseModule) -> None:
        seen["schedule"] = self.schedule
        self.trainer.should_stop = True  # the schedule is all this test needs

    monkeypatch.setattr(PoseModule, "on_train_start", on_train_start)
    # 24 images / batch 4 = 6 batches per epoch; one epoch of warm-up (at least 1 step).
    main(["fit", "--config", str(tiny_config(tmp_path, cache)), "--model.warmup_epochs", "1",
          "--model.warmup_min_steps", "1", *flags])
    assert (seen["schedule"].total_steps, seen["schedule"].warmup_steps) == (total, warmup)


def test_fp16_amp_with_gradient_clipping_trains(tmp_path: Path, cache: Path) -> None:
    """``16-mixed`` (the COCO default) with ``--trainer.gradient_clip_val``: a fused optimiser unscales its own
    gradients, so Lightning refused to clip them at the first step. The CPU gets a real fp16 scaler here."""
    amp = tmp_path / "amp.yaml"
    amp.write_text(yaml.safe_dump({"trainer": {"gradient_clip_val": 1.0, "plugins": [{
        "class_path": "pytorch_lightning.plugins.precision.MixedPrecision",
        "init_args": {"precision": "16-mixed", "device": "cpu",
                      "scaler": {"class_path": "torch.amp.GradScaler", "init_args": {"device": "cpu"}}}}]}}))
    main(["fit", "--config", str(tiny_config(tmp_path, cache)), "--config", str(amp), "--trainer.max_steps", "2"])
    assert read_checkpoint(next((tmp_path / "run").glob("*/version_0/checkpoints/last.ckpt")))["global_step"] == 2
