"""Reading yolopose checkpoints safely (``weights_only=True``) with clear errors."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn


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
    """The first of ``paths`` that reads as a yolopose checkpoint, with the checkpoint (``read_checkpoint``).

    Args:
        paths: candidates, the preferred (newest) first.
        skipped: called with the error of each candidate that does not read, in order.
    Raises:
        CheckpointError: none reads (the error of the first candidate).
    """
    errors: list[CheckpointError] = []
    for path in paths:
        try:
            return path, read_checkpoint(path)
        except CheckpointError as exc:
            errors.append(exc)
            skipped(exc)
    raise errors[0] if errors else CheckpointError("no checkpoint to read")


def checkpoint_hparams(path: str | Path) -> dict:
    """The hyperparameters a checkpoint was trained with (``num_keypoints``, ``variant``, ...)."""
    return read_checkpoint(path)["hyper_parameters"]


NOT_WEIGHTS = ("anchors", "num_batches_tracked")
"""State entries ``init_from`` never copies: the anchors are configuration, BatchNorm's step counter is not a weight."""

UNTRAINED_KEY = "yolopose_untrained"
"""Checkpoint entry: the model's parts (module prefixes such as ``head.kpt``) that were never trained, which
``init_from`` leaves fresh (``PoseModule`` writes it)."""

KEYPOINT_BRANCH = "head.kpt"


def untrained_parts(ckpt: dict) -> list[str]:
    """The parts of a checkpoint's model that were never trained: as recorded (``UNTRAINED_KEY``), else, for a
    checkpoint from before the record, the keypoint branch of a run whose keypoint losses were all off."""
    if UNTRAINED_KEY in ckpt:
        return list(ckpt[UNTRAINED_KEY])
    hp = ckpt["hyper_parameters"]
    off = all(float(hp.get(k, 1.0)) == 0 for k in ("kpt_weight", "kpt_conf_weight")) and \
        not float(hp.get("kpt_l1_weight", 0.0))
    return [KEYPOINT_BRANCH] if off else []


def init_weights_from(model: nn.Module, path: str | Path) -> tuple[str, set[str]]:
    """Copy into ``model`` (a ``YOLOPose``) every layer of a yolopose checkpoint whose tensors all match by name and
    shape and that the checkpoint's run trained; everything else keeps its fresh initialisation. Returns the
    one-line report and the names of the layers copied.

    The checkpoint's EMA weights are used when it has them (the weights it validated and exports), else its
    raw model weights. A layer (a module's parameters and buffers: a conv's weight and bias, a BatchNorm's
    affine and statistics) is copied whole or not at all, so no layer mixes two initialisations. Across K the
    keypoint branch's last conv is left fresh; across variants nothing fits (every width differs). Parts the
    checkpoint never trained (``untrained_parts``: a detector-first run's keypoint branch) are left fresh too.

    Raises:
        CheckpointError: unreadable file, or not a single layer fits.
    """
    ckpt = read_checkpoint(path)
    state = ckpt["state_dict"]
    prefix = "ema.module." if any(k.startswith("ema.module.") for k in state) else "model."
    source = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    layers: dict[str, list[str]] = defaultdict(list)
    target = model.state_dict()
    for name in target:
        if name.rsplit(".", 1)[-1] not in NOT_WEIGHTS:
            layers[name.rpartition(".")[0]].append(name)
    untrained = untrained_parts(ckpt)
    never = {layer for layer in layers if any(layer == p or layer.startswith(p + ".") for p in untrained)}
    fits = {layer: layer not in never and all(n in source and source[n].shape == target[n].shape for n in names)
            for layer, names in layers.items()}
    copied = {n: source[n] for layer, names in layers.items() if fits[layer] for n in names}
    hp = ckpt["hyper_parameters"]
    if not copied:
        raise CheckpointError(
            f"{path}: no layer of the checkpoint (variant {hp.get('variant')}, K={hp.get('num_keypoints')}) fits "
            f"this model (variant {getattr(model, 'variant', '?')}, K={getattr(model, 'num_keypoints', '?')}) by "
            "name and shape: nothing to initialise from")
    model.load_state_dict(copied, strict=False)
    parts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for layer, ok in fits.items():
        part = ".".join(layer.split(".")[:2]) if layer.startswith("head.") else layer.split(".")[0]
        parts[part][0] += ok
        parts[part][1] += 1
    fresh = sorted(layer for layer, ok in fits.items() if not ok)
    shown = ", ".join(fresh[:4]) + (f" and {len(fresh) - 4} more" if len(fresh) > 4 else "")
    summary = ", ".join(f"{part} {ok}/{n}" for part, (ok, n) in parts.items())
    skipped = f" ({', '.join(untrained)} never trained in the checkpoint: left fresh)" if never else ""
    report = (f"init_from {path} ({'EMA' if prefix == 'ema.module.' else 'model'} weights, variant "
              f"{hp.get('variant')}, K={hp.get('num_keypoints')}): loaded {sum(fits.values())} of {len(fits)} "
              f"layers ({summary}); freshly initialised: {shown or 'none'}{skipped}")
    return report, {layer for layer, ok in fits.items() if ok}


def trained_image_size(ckpt: dict) -> int | None:
    """The input size a checkpoint was trained and validated at (``data.image_size``), ``None`` if unrecorded.

    ``PoseDataModule`` saves it as a hyperparameter, which Lightning writes to ``datamodule_hyper_parameters``.
    """
    size = (ckpt.get("datamodule_hyper_parameters") or {}).get("image_size")
    return int(size) if size else None
