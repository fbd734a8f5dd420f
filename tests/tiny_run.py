"""Helpers of the CLI tests: a tiny training config on the synthetic set, run folders, train.py in a subprocess
(the ``cache`` fixture that builds the tiny synthetic set is in ``conftest.py``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
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


def run_dir(tmp: Path) -> Path:
    """The newest ``version_N`` log directory of a run."""
    return sorted((tmp / "run" / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]


def train_subprocess(args: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, **kwargs)
