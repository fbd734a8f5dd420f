"""Writing checkpoints atomically: a kill, a crash or a full disk leaves the old file or the new one under
a checkpoint's name, never a part of one.

Lightning's default writer serialises into memory and moves a file from the system temp folder into place;
when that folder is on another filesystem (a tmpfs ``/tmp``, a network disk for the run) the move is a copy
into the real name, and nothing is flushed to disk before it. Here the checkpoint is written to a hidden
temporary name in the checkpoint's own folder, flushed and fsync'ed, then renamed over the real name with
``os.replace`` (atomic on POSIX and Windows within one filesystem), and the folder is fsync'ed so the
rename itself survives a power cut.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.plugins.io import TorchCheckpointIO


def partial_path(path: Path) -> Path:
    """The temporary name ``path`` is written under: ``.<name>.partial`` in the same folder (so the rename
    stays on one filesystem; hidden and not ``*.ckpt``, so no checkpoint search picks it up). A kill
    mid-write leaves it behind; the next write of the same checkpoint reuses and renames it."""
    return path.with_name(f".{path.name}.partial")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its rename is durable without this
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomically(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file in the same folder + ``os.replace``.

    Raises:
        whatever ``torch.save`` or the filesystem raise (e.g. ``OSError`` on a full disk); the previous file
        under ``path``, if any, is then untouched and the temporary file removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` whose local writes go through ``save_atomically`` (loading and removing
    are Lightning's). ``train.py`` installs it in every Trainer it builds unless a ``CheckpointIO`` plugin is
    given, so every checkpoint writer (the best checkpoint, ``last.ckpt``, ``trainer.save_checkpoint``) uses
    it. Remote paths (``s3://`` ...) keep Lightning's writer: an object store replaces a whole object at once.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_atomically(checkpoint, str(path).removeprefix("file://"))
