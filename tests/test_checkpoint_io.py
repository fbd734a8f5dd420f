"""Atomic checkpoint writes and the choice among resume candidates, without training."""
from __future__ import annotations

import errno
import io
from pathlib import Path

import pytest
import torch

from yolopose import checkpoint_io
from yolopose.checkpoint import CheckpointError, first_readable
from yolopose.checkpoint_io import AtomicCheckpointIO


def _checkpoint(step: int) -> dict:
    return {"global_step": step, "hyper_parameters": {"num_keypoints": 5}, "state_dict": {"w": torch.full((64,), step)}}


def test_write_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    plugin = AtomicCheckpointIO()
    plugin.save_checkpoint(_checkpoint(1), path)
    plugin.save_checkpoint(_checkpoint(2), path)
    assert plugin.load_checkpoint(path)["global_step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_write_that_fails_midway_leaves_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.ckpt"
    plugin = AtomicCheckpointIO()
    plugin.save_checkpoint(_checkpoint(1), path)
    old = path.read_bytes()

    def disk_full(obj: object, f: io.BufferedWriter, *args: object, **kwargs: object) -> None:
        f.write(b"\0" * 1000)  # some bytes made it out before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        plugin.save_checkpoint(_checkpoint(2), path)
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_stale_partial_file_is_reused_by_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    stale = checkpoint_io.partial_path(path)
    stale.write_bytes(b"what a kill mid-write leaves" * 1000)
    assert stale.parent == path.parent and not stale.name.endswith(".ckpt")
    AtomicCheckpointIO().save_checkpoint(_checkpoint(3), path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.load(path, weights_only=True)["global_step"] == 3


def test_first_readable_skips_unreadable_candidates_in_order(tmp_path: Path) -> None:
    good, cut, junk = tmp_path / "good.ckpt", tmp_path / "cut.ckpt", tmp_path / "junk.ckpt"
    torch.save(_checkpoint(4), good)
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk.write_bytes(b"not a checkpoint")
    skipped: list[CheckpointError] = []
    path, ckpt = first_readable([cut, junk, good], skipped.append)
    assert path == good and ckpt["hyper_parameters"] == {"num_keypoints": 5} and ckpt["global_step"] == 4
    assert [str(e).split(":")[0] for e in skipped] == [str(cut), str(junk)]
    assert all("\n" not in str(e) for e in skipped)
    with pytest.raises(CheckpointError, match=f"^{cut}: not a readable yolopose checkpoint"):
        first_readable([cut, junk], lambda e: None)
