"""``python -m yolopose.tools.overfit``: the real-data sanity check drives train.py and reports a verdict."""
from __future__ import annotations

from pathlib import Path

import pytest

from yolopose.synthetic import SyntheticConfig, write_synthetic_dataset
from yolopose.tools.overfit import main

pytestmark = pytest.mark.slow
TINY = ["--model.width", "0.125", "--model.kpt_head_depth", "1", "--data.image_size", "128",
        "--trainer.check_val_every_n_epoch", "1", "--trainer.accelerator", "cpu"]


@pytest.fixture(scope="module")
def few(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    paths = write_synthetic_dataset(tmp_path_factory.mktemp("few"),
                                    SyntheticConfig(num_train=0, num_val=3, image_size=160, max_people=2))
    return str(paths.val_ann), str(paths.val_images)


def test_stops_at_the_target_and_reports_it(few: tuple[str, str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    ann, images = few
    code = main(["--ann", ann, "--images", images, "--target", "-1", "--out", str(tmp_path), *TINY,
                 "--trainer.max_epochs", "5"])
    out = capsys.readouterr().out
    assert code == 0 and "PASSED" in out and "after 1 epochs" in out  # any AP beats -1: stops at the first validation


def test_unmet_target_fails(few: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann, images = few
    code = main(["--ann", ann, "--images", images, "--target", "1.01", "--out", str(tmp_path), *TINY,
                 "--trainer.max_epochs", "1"])
    assert code == 1 and "NOT reached" in capsys.readouterr().out
