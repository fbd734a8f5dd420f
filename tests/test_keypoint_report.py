"""``python -m yolopose.tools.keypoint_report`` end to end on a written COCO split and an untrained checkpoint."""
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import KPT_NAMES
from yolopose.module import PoseModule
from yolopose.tools.keypoint_report import main, parser

POSE = np.array([[0.0, -0.4], [-0.1, -0.45], [0.1, -0.45], [-0.3, 0.1], [0.35, 0.05]])  # box-relative


def _same_pose_everywhere(coco: dict) -> dict:
    """Every person gets POSE placed in its box, all keypoints labelled and visible."""
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        kp = np.concatenate([(x + w / 2, y + h / 2) + POSE * (w, h), np.full((len(POSE), 1), 2.0)], 1)
        ann["keypoints"], ann["num_keypoints"] = kp.ravel().tolist(), len(POSE)
    return coco


def _checkpoint(path: Path, k: int) -> Path:
    torch.manual_seed(0)
    module = PoseModule(num_keypoints=k, variant="n", keypoint_names=list(KPT_NAMES)[:k], category_ids=[1],
                        keypoint_prior=POSE[:k].tolist() if k == len(POSE) else None)
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                "pytorch-lightning_version": "2.0.0"}, path)
    return path


def test_report_scores_the_mean_pose_baseline_and_lists_every_keypoint(
        people_coco: Callable[..., dict], write_coco: Callable[..., tuple[Path, Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ann, images = write_coco(_same_pose_everywhere(people_coco([(120, 160), (200, 150), (128, 128)])), "val")
    ckpt = _checkpoint(tmp_path / "m.ckpt", len(POSE))
    assert main(["--weights", str(ckpt), "--ann", str(ann), "--images", str(images), "--image_size", "128"]) == 0
    out = capsys.readouterr().out
    # every person shares the mean pose: placed in the true boxes, it is exact once mapped back
    assert "mean pose in GT box    AP 1.000" in out
    ap = {line.split("AP ")[0].strip(): float(line.split("AP ")[1].split()[0]) for line in out.splitlines()
          if " AP50 " in line}
    assert set(ap) == {"model", "best positive", "mean pose in GT box"}
    assert 0.0 <= ap["model"] <= 1.0 and 0.0 <= ap["best positive"] <= 1.0
    assert all(name in out for name in KPT_NAMES) and "P3 (stride 8)" in out


def test_report_refuses_a_checkpoint_of_another_k(people_coco: Callable[..., dict],
                                                  write_coco: Callable[..., tuple[Path, Path]], tmp_path: Path) -> None:
    ann, images = write_coco(people_coco([(120, 160)]), "val")
    ckpt = _checkpoint(tmp_path / "m3.ckpt", 3)
    with pytest.raises(SystemExit, match="K=5 but .* has K=3"):
        main(["--ckpt", str(ckpt), "--ann", str(ann), "--images", str(images), "--imgsz", "128"])


def test_old_flag_names_stay_aliases_of_the_shared_ones() -> None:
    common = ["--ann", "a.json", "--images", "dir"]
    new = parser().parse_args(["--weights", "m.ckpt", "--image_size", "320", "--batch_size", "4", *common])
    old = parser().parse_args(["--ckpt", "m.ckpt", "--imgsz", "320", "--batch", "4", *common])
    assert vars(new) == vars(old) == {"weights": "m.ckpt", "image_size": 320, "batch_size": 4, "ann": "a.json",
                                      "images": "dir"}
