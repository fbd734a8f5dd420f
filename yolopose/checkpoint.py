"""Reading yolopose checkpoints safely (``weights_only=True``) with clear errors."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch


class CheckpointError(ValueError):
    """A file that is missing, unreadable, or not a yolopose checkpoint."""


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, loaded on the CPU with ``weights_only=True`` (no arbitrary code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a readable checkpoint"
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line (torch's messages can span many)
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise CheckpointError(f"{path}: not a readable yolopose checkpoint ({reason})") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not hp or "num_keypoints" not in hp or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a yolopose checkpoint (no yolopose hyperparameters/state_dict inside)")
    return ckpt


def first_readable(paths: Sequence[Path], skipped: Callable[[CheckpointError], None]) -> tuple[Path, dict]:
    """The first of ``paths`` that reads as a yolopose checkpoint, with its hyperparameters.

    Args:
        paths: candidates, the preferred (newest) first.
        skipped: called with the error of each candidate that does not read, in order.
    Raises:
        CheckpointError: none reads (the error of the first candidate).
    """
    errors: list[CheckpointError] = []
    for path in paths:
        try:
            return path, read_checkpoint(path)["hyper_parameters"]
        except CheckpointError as exc:
            errors.append(exc)
            skipped(exc)
    raise errors[0] if errors else CheckpointError("no checkpoint to read")


def checkpoint_hparams(path: str | Path) -> dict:
    """The hyperparameters a checkpoint was trained with (``num_keypoints``, ``variant``, ...)."""
    return read_checkpoint(path)["hyper_parameters"]


def load_module(path: str | Path):
    """Rebuild the ``PoseModule`` of a checkpoint (EMA weights included) in eval mode on the CPU."""
    from yolopose.module import PoseModule  # local: keeps this module importable without Lightning

    ckpt = read_checkpoint(path)
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    module = PoseModule(**hp)
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if [m for m in missing if not m.startswith("criterion.")] or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model they describe "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return module.eval()
