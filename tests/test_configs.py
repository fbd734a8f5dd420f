"""Every shipped config parses: known keys, right types, a valid variant (no files are needed to parse)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from yolopose.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_configs() -> None:
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "synthetic_long.yaml", "overfit.yaml", "coco_s_640.yaml", "coco_s_960.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_parses(config: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(config.read_text())
    assert printed["model"]["variant"] in ("n", "s", "m", "l", "x")
    for section in ("trainer", "model", "data"):   # every key written in the file survived the parse
        for key, value in written.get(section, {}).items():
            if not isinstance(value, (dict, list)):
                assert printed[section][key] == value, f"{config.name}: {section}.{key}"
