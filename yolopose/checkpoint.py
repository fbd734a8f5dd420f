"""Reading yolopose checkpoints safely (``weights_only=True``) with clear errors."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from yolopose.export.contract import ModelInfo
    from yolopose.nn.model import YOLOPose


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
        raise CheckpointError(f"{path}: not a readable yolopose checkpoint ({type(exc).__name__}: {exc})") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not hp or "num_keypoints" not in hp or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a yolopose checkpoint (no yolopose hyperparameters/state_dict inside)")
    return ckpt


def checkpoint_hparams(path: str | Path) -> dict:
    """The hyperparameters a checkpoint was trained with (``num_keypoints``, ``variant``, ...)."""
    return read_checkpoint(path)["hyper_parameters"]


def trained_image_size(ckpt: dict) -> int | None:
    """The input size a checkpoint was trained and validated at (``data.image_size``), ``None`` if unrecorded.

    ``PoseDataModule`` saves it as a hyperparameter, which Lightning writes to ``datamodule_hyper_parameters``.
    """
    size = (ckpt.get("datamodule_hyper_parameters") or {}).get("image_size")
    return int(size) if size else None


def load_module(path: str | Path):
    """Rebuild the ``PoseModule`` of a checkpoint (EMA weights included) in eval mode on the CPU."""
    return _build_module(read_checkpoint(path), path)


def _build_module(ckpt: dict, path: str | Path):
    from yolopose.module import PoseModule  # local: keeps this module importable without Lightning

    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    module = PoseModule(**hp)
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if [m for m in missing if not m.startswith("criterion.")] or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model they describe "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return module.eval()


def load_deployable(path: str | Path) -> tuple["YOLOPose", "ModelInfo"]:
    """The network to deploy (EMA weights when there are some; float32, eval, CPU) and its ``ModelInfo``."""
    from yolopose.export.contract import ModelInfo

    ckpt = read_checkpoint(path)
    module = _build_module(ckpt, path)
    model = module.inference_model.float().eval()
    info = ModelInfo.from_hparams(module.hparams, max(model.strides), trained_image_size(ckpt))
    return model, info
