"""The ``train.py`` command line: LightningCLI with yolopose's links, checkpoints and checks."""
from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import CheckpointIO
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from yolopose.callbacks import LastCheckpoint, last_checkpoint_folder, run_of
from yolopose.checkpoint import CheckpointError, first_readable, read_checkpoint
from yolopose.checkpoint_io import AtomicCheckpointIO
from yolopose.configs import config_files, shipped
from yolopose.data.datamodule import PoseDataModule
from yolopose.data.sample import DatasetError
from yolopose.module import PoseModule

DEMO_CONFIG = "demo"  # the shipped config that runs when train.py gets no arguments

# Dataset facts the model takes from the DataModule: typed once, in the data.
LINKED = ("num_keypoints", "num_classes", "sigmas", "keypoint_names", "skeleton", "category_ids", "keypoint_prior")


class ConfigError(ValueError):
    """A configuration problem found before training starts."""


MOVED = {
    "yolopose.precise_bn.PreciseBatchNorm": "yolopose.callbacks.PreciseBatchNorm",
    "yolopose.precise_bn.recompute_batchnorm_stats": "yolopose.callbacks.recompute_batchnorm_stats",
    "yolopose.data.synthetic.SyntheticConfig": "yolopose.synthetic.SyntheticConfig",
}
"""Class paths of earlier yolopose layouts that a saved config may still name -> where they live now."""


def check_moved(text: str, where: str) -> None:
    """Raise a one-line ``ConfigError`` when ``text`` (a config file's or an argument's) names a moved class path."""
    for old, new in MOVED.items():
        if old in text:
            raise ConfigError(f"{where}: {old} is now {new} (this config was written for an older yolopose); "
                              f"replace the old path")


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
            check_moved(args[i], "command line")
            out.append(args[i])
            i += 1
            continue
        if not eq:
            value = args[i + 1]
        files = config_files(value)
        if files is None and not any(c in value for c in ":{\n"):  # inline YAML goes on to jsonargparse
            raise ConfigError(f"--config {value}: no such file and no shipped config of that name "
                              f"(shipped: {', '.join(shipped())})")
        for f in files or []:
            check_moved(Path(f).read_text(errors="replace"), str(f))
        for f in files or [value]:
            out += [f"{flag}={f}"] if eq else [flag, str(f)]
        i += 1 if eq else 2
    return out


log = logging.getLogger("yolopose")


def find_last_checkpoints(root: Path, folder: Path | None = None) -> list[Path]:
    """The ``last*.ckpt`` files a ``--ckpt_path last`` may resume from, newest first: those in ``folder`` when
    the run writes ``last.ckpt`` into a folder of its own (``callbacks.last_checkpoint_folder``), else every
    ``<root>/<logger name>/version_N/checkpoints/last*.ckpt`` (only that layout is searched, so a
    ``default_root_dir`` that also holds a dataset is not crawled; ``last-v1.ckpt`` and the like are what older
    versions of yolopose left)."""
    paths = folder.glob("last*.ckpt") if folder is not None else root.glob("*/version_*/checkpoints/last*.ckpt")
    found = [(p.stat().st_mtime, p) for p in paths]
    return [p for _, p in sorted(found, key=lambda mp: (-mp[0], str(mp[1])))]


@rank_zero_only
def _warn_skipped(exc: CheckpointError) -> None:
    log.warning("--ckpt_path last: skipped %s", exc)


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
        # The best checkpoint; last.ckpt has one writer of its own, added after it (it must run after it).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/kpt_AP", "checkpoint.mode": "max",
                             "checkpoint.save_top_k": 1, "checkpoint.filename": "best-epoch{epoch}",
                             "checkpoint.auto_insert_metric_name": False})
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.subcommand) if self.subcommand else self.config
        self._checked: tuple[str, dict, dict | None] | None = None  # (path, hyperparameters, run folder)
        if cfg is None:
            return
        if cfg.get("checkpoint") and cfg["checkpoint"].get("save_last"):
            raise ConfigError("checkpoint.save_last: last.ckpt has one writer, last_checkpoint (every "
                              "last_checkpoint.every_n_train_steps steps, at each validation and at the end of fit); "
                              "leave checkpoint.save_last unset")
        if cfg.get("last_checkpoint") and cfg["last_checkpoint"].get("every_n_train_steps", 0) < 0:
            raise ConfigError(f"last_checkpoint.every_n_train_steps must be >= 0 (0: only at validations and the "
                              f"end), got {cfg['last_checkpoint']['every_n_train_steps']}")
        if cfg.get("ckpt_path") != "last":
            return
        root = Path(cfg["trainer"]["default_root_dir"] or ".")
        folder = last_checkpoint_folder((cfg.get("last_checkpoint") or {}).get("dirpath"),
                                        (cfg.get("checkpoint") or {}).get("dirpath"))
        candidates = find_last_checkpoints(root, folder)
        if not candidates:
            rank_zero_warn(f"--ckpt_path last: no last.ckpt in {folder or root}; starting a new run")
            cfg["ckpt_path"] = None
            return
        last, ckpt = first_readable(candidates, _warn_skipped)  # none readable: the newest one's error
        rank_zero_info(f"resuming from {last}")
        cfg["ckpt_path"] = str(last)
        self._checked = (str(last), ckpt["hyper_parameters"], run_of(ckpt, last))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with atomic checkpoint writes unless a ``CheckpointIO`` plugin was given."""
        given = kwargs.get("plugins", self._get(self.config_init, "trainer", default={}).get("plugins"))
        plugins = list(given) if isinstance(given, (list, tuple)) else [] if given is None else [given]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(**{**kwargs, "plugins": plugins})

    def _check_checkpoint(self) -> None:
        cfg = self.config[self.subcommand]
        path = cfg.get("ckpt_path")
        if not path or path in ("best", "last", "hpc", "registry"):
            return
        known = getattr(self, "_checked", None)
        if not known or known[0] != str(path):
            ckpt = read_checkpoint(path)
            known = (str(path), ckpt["hyper_parameters"], run_of(ckpt, Path(path)))
            del ckpt
        _, hp, run = known
        dm = self.datamodule
        if int(hp["num_keypoints"]) != dm.num_keypoints or int(hp.get("num_classes", 1)) != dm.num_classes:
            raise ConfigError(
                f"{path}: checkpoint has K={hp['num_keypoints']} keypoints and C={hp.get('num_classes', 1)} "
                f"classes but the dataset has K={dm.num_keypoints}, C={dm.num_classes}")
        # A resumed fit continues in its own run folder (its logger name and version, whatever this command's
        # logger is called): TensorBoard curves carry on, checkpoints land beside the ones the best checkpoint's
        # restored bookkeeping names, and no other run's last.ckpt is written over.
        if self.subcommand == "fit" and run and isinstance(self.trainer.logger, TensorBoardLogger):
            self.trainer.loggers = [TensorBoardLogger(run["save_dir"], name=run["name"], version=run["version"],
                                                      default_hp_metric=False)]
            rank_zero_info(f"logging into the resumed run's folder {self.trainer.logger.log_dir}")

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
    except SIGTERMException:  # last.ckpt was written at the step it stopped (LastCheckpoint.on_exception)
        print("stopped by SIGTERM; continue with --ckpt_path last", file=sys.stderr)
        sys.exit(128 + 15)
    finally:
        # Lightning leaves the DDP process group open; left to interpreter shutdown, gloo's threads were seen
        # to abort a finished run ("terminate called without an active exception", exit -6).
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
