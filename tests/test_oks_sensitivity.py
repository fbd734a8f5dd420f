"""``python -m yolopose.tools.oks_sensitivity``: exact ground truth scores 1, noise lowers AP, mean-pose baselines."""
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_keypoint_report import _same_pose_everywhere
from yolopose.data.coco import CocoKeypoints
from yolopose.tools.oks_sensitivity import main, sensitivity

SIZES = [(120, 160), (200, 150), (128, 128), (160, 240), (180, 120), (140, 140)]


def _ap(results: list[tuple[str, dict]]) -> list[float]:
    return [met["kpt_AP"] for _, met in results]


def test_exact_truth_scores_one_and_noise_lowers_ap(people_coco: Callable[..., dict],
                                                     write_coco: Callable[..., tuple[Path, Path]]) -> None:
    split = CocoKeypoints(*write_coco(people_coco(SIZES), "val"))
    noise = [0.0, 0.02, 0.1, 0.3]
    ap = _ap(sensitivity(split, noise, mean_pose=[0, 1]))
    assert ap[0] == pytest.approx(1.0)
    assert ap[0] >= ap[1] > ap[2] > ap[3] and ap[3] < 0.05     # 0.3 sqrt(area) off: nothing matches
    assert ap[4] < 1.0 and ap[5] < ap[4]                         # people_coco poses differ: the mean pose is not exact


def test_mean_pose_is_exact_when_everyone_shares_it(people_coco: Callable[..., dict],
                                                    write_coco: Callable[..., tuple[Path, Path]],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ann, images = write_coco(_same_pose_everywhere(people_coco(SIZES)), "val")
    assert main(["--ann", str(ann), "--images", str(images), "--noise", "0,0.05", "--mean-pose", "nose"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(" AP ")[0].strip(): float(line.split(" AP ")[1].split()[0]) for line in out.splitlines()
             if " AP50 " in line}
    assert lines["exact, but mean pose for: nose"] == pytest.approx(1.0)
    assert lines["mean pose for every keypoint"] == pytest.approx(1.0)
    assert lines["noise RMS 0.00 x sqrt(box area)"] == pytest.approx(1.0)
    assert lines["noise RMS 0.05 x sqrt(box area)"] < 1.0


def test_unknown_keypoint_name_is_refused(people_coco: Callable[..., dict],
                                          write_coco: Callable[..., tuple[Path, Path]]) -> None:
    ann, images = write_coco(people_coco(SIZES[:2]), "val")
    with pytest.raises(SystemExit, match="no keypoint named elbow"):
        main(["--ann", str(ann), "--images", str(images), "--mean-pose", "nose,elbow"])
