"""Rebuilding what a checkpoint describes: the ``PoseModule`` (``load_module``) or the network to deploy with its
``ModelInfo`` (``load_deployable``). System level: reading the file is ``checkpoint.py``'s, below the module."""
from __future__ import annotations

from pathlib import Path

from yolopose.checkpoint import CheckpointError, read_checkpoint, trained_image_size
from yolopose.export.contract import ModelInfo
from yolopose.module import PoseModule
from yolopose.nn.model import YOLOPose


def load_module(path: str | Path) -> PoseModule:
    """Rebuild the ``PoseModule`` of a checkpoint (EMA weights included) in eval mode on the CPU."""
    return _build_module(read_checkpoint(path), path)


def _build_module(ckpt: dict, path: str | Path) -> PoseModule:
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    module = PoseModule(**hp)
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if [m for m in missing if not m.startswith("criterion.")] or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model they describe "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return module.eval()


def load_deployable(path: str | Path) -> tuple[YOLOPose, ModelInfo]:
    """The network to deploy (EMA weights when there are some; float32, eval, CPU) and its ``ModelInfo``."""
    ckpt = read_checkpoint(path)
    module = _build_module(ckpt, path)
    model = module.inference_model.float().eval()
    info = ModelInfo.from_hparams(module.hparams, max(model.strides), trained_image_size(ckpt))
    return model, info
