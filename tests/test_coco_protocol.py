"""The COCO configs follow the reference's protocol (docs/coco-protocol.md), checked on the parsed config."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from yolopose.cli import main
from yolopose.configs import CONFIG_DIR

CONFIGS = sorted(CONFIG_DIR.glob("coco_*_*.yaml"))
POSE = [p for p in CONFIGS if "detector" not in p.stem]


def parsed(config: Path, capsys: pytest.CaptureFixture) -> dict:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


def test_six_pose_configs() -> None:
    assert len(POSE) == 6


@pytest.mark.parametrize("config", POSE, ids=[p.stem for p in POSE])
def test_pose_config_follows_the_reference_protocol(config: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = parsed(config, capsys)
    assert cfg["data"]["train_negatives"] == 0.0          # the 56.6k images with a person with keypoints
    assert cfg["model"]["lr_final"] == 0.2 and cfg["model"]["schedule"] == "cosine"
    assert cfg["trainer"]["gradient_clip_val"] is None
    assert cfg["model"]["top_k"] == 30000


def test_detector_first_config_is_box_only_on_every_image(capsys: pytest.CaptureFixture) -> None:
    cfg = parsed(next(p for p in CONFIGS if "detector" in p.stem), capsys)
    assert cfg["model"]["kpt_weight"] == 0.0 and cfg["model"]["kpt_conf_weight"] == 0.0
    assert cfg["data"]["train_negatives"] == 1.0 and cfg["checkpoint"]["monitor"] == "val/box_AP"
