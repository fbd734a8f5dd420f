"""The ``train.py`` command line: LightningCLI with yolopose's links, checkpoints and checks."""
from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from yolopose.checkpoint import CheckpointError, checkpoint_hparams
from yolopose.configs import config_files, shipped
from yolopose.data.datamodule import PoseDataModule
from yolopose.data.sample import DatasetError
from yolopose.module import PoseModule

DEMO_CONFIG = "demo"  # the shipped config that runs when train.py gets no arguments

# Dataset facts the model takes from the DataModule: typed once, in the data.
LINKED = ("num_keypoints", "num_classes", "sigmas", "keypoint_names", "skeleton", "category_ids", "keypoint_prior")


class ConfigError(ValueError):
    """A configuration problem found before training starts."""


def resolve_configs(args: list[str]) -> list[str]:
    """``args`` with every ``--config`` / ``-c`` value made file paths: a shipped config by its bare name
    (``coco_s_640``, ``coco_s_640.yaml``) or any file path, a shipped overlay preceded by its base
    (see ``yolopose.configs.config_files``).

    Raises:
        ConfigError: a value that is neither a file nor a shipped config (inline YAML is passed on).
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if flag not in ("--config", "-c") or (not eq and i + 1 >= len(args)):
            out.append(args[i])
            i += 1
            continue
        if not eq:
            value = args[i + 1]
        files = config_files(value)
        if files is None and not any(c in value for c in ":{\n"):  # inline YAML goes on to jsonargparse
            raise ConfigError(f"--config {value}: no such file and no shipped config of that name "
                              f"(shipped: {', '.join(shipped())})")
        for f in files or [value]:
            out += [f"{flag}={f}"] if eq else [flag, str(f)]
        i += 1 if eq else 2
    return out


def find_last_checkpoint(root: Path) -> Path | None:
    """The newest ``<root>/<logger name>/version_N/checkpoints/last*.ckpt`` (only that layout is searched,
    so a ``default_root_dir`` that also holds a dataset is not crawled)."""
    found = sorted(root.glob("*/version_*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


class _DropTips(logging.Filter):
    """Drops Lightning's advertising lines ("Tip: ... try installing ...") from the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def quiet_lightning() -> None:
    """Silence messages that are expected with yolopose and only confuse a newcomer."""
    # The EMA copy lives in eval mode on purpose (BatchNorm uses its averaged statistics).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    # main() passes the arguments explicitly (the demo has none), which LightningCLI warns about.
    warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())


class PoseCLI(LightningCLI):
    """LightningCLI over ``PoseModule`` and ``PoseDataModule``; every Trainer flag stays available."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in LINKED:
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/kpt_AP", "checkpoint.mode": "max",
                             "checkpoint.save_top_k": 1, "checkpoint.filename": "best-epoch{epoch}",
                             "checkpoint.save_last": True,  # last.ckpt also whenever a new best is saved
                             "checkpoint.auto_insert_metric_name": False})
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults({"last_checkpoint.save_top_k": 0, "last_checkpoint.save_last": True,
                             "last_checkpoint.every_n_train_steps": 100})

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.subcommand) if self.subcommand else self.config
        if cfg is None or cfg.get("ckpt_path") != "last":
            self._resume_version = None
            return
        root = Path(cfg["trainer"]["default_root_dir"] or ".")
        last = find_last_checkpoint(root)
        if last is None:
            rank_zero_warn(f"--ckpt_path last: no last.ckpt under {root}; starting a new run")
            cfg["ckpt_path"] = None
            self._resume_version = None
        else:
            rank_zero_info(f"resuming from {last}")
            cfg["ckpt_path"] = str(last)
            self._resume_version = last.parent.parent.name

    def _check_checkpoint(self) -> None:
        cfg = self.config[self.subcommand]
        path = cfg.get("ckpt_path")
        if not path or path in ("best", "last", "hpc", "registry"):
            return
        hp = checkpoint_hparams(path)
        dm = self.datamodule
        if int(hp["num_keypoints"]) != dm.num_keypoints or int(hp.get("num_classes", 1)) != dm.num_classes:
            raise ConfigError(
                f"{path}: checkpoint has K={hp['num_keypoints']} keypoints and C={hp.get('num_classes', 1)} "
                f"classes but the dataset has K={dm.num_keypoints}, C={dm.num_classes}")
        # Continue a resumed run in its own log directory, so TensorBoard curves carry on.
        version = getattr(self, "_resume_version", None)
        logger = self.trainer.logger
        if version and isinstance(logger, TensorBoardLogger) and version.startswith("version_"):
            self.trainer.loggers = [TensorBoardLogger(logger.save_dir, name=logger.name, version=version,
                                                      default_hp_metric=False)]

    def before_fit(self) -> None:
        self._check_checkpoint()

    def before_validate(self) -> None:
        self._check_checkpoint()

    def after_fit(self) -> None:
        log_dir = self.trainer.log_dir  # a collective (broadcast): every rank must ask
        if not self.trainer.is_global_zero:
            return
        best = self.trainer.checkpoint_callback
        score = getattr(best, "best_model_score", None)
        lines = ["", "training finished."]
        if score is not None:
            lines.append(f"best val/kpt_AP = {float(score):.4f}  ({best.best_model_path})")
        if self.model.last_metrics:
            lines.append(f"last validation: kpt_AP = {self.model.last_metrics['kpt_AP']:.4f}, "
                         f"box_AP = {self.model.last_metrics['box_AP']:.4f}")
        lines.append(f"TensorBoard: tensorboard --logdir {log_dir}")
        print("\n".join(lines), flush=True)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``train.py``; with no arguments at all, runs the synthetic CPU demo."""
    args = sys.argv[1:] if args is None else args
    quiet_lightning()
    if not args:
        args = ["fit", "--config", DEMO_CONFIG]
        print(f"no arguments: running the synthetic demo ({DEMO_CONFIG}.yaml); see README.md for real data",
              flush=True)
    try:
        args = resolve_configs(args)
        PoseCLI(PoseModule, PoseDataModule, args=args, save_config_kwargs={"overwrite": True},
                parser_kwargs={"default_env": False})
    except (ConfigError, CheckpointError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        # Lightning leaves the DDP process group open; left to interpreter shutdown, gloo's threads were seen
        # to abort a finished run ("terminate called without an active exception", exit -6).
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
