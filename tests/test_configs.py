"""Every shipped config parses: known keys, right types, a valid variant (no files are needed to parse);
configs are found by bare name from any directory; the console scripts point at real entry points."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from yolopose.cli import ConfigError, main, resolve_configs
from yolopose.configs import BASE_OF, CONFIG_DIR, find_config, shipped

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


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


def _printed(args: list[str], capsys: pytest.CaptureFixture) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("spelling", ["coco_s_960", "coco_s_960.yaml", "configs/coco_s_960.yaml", "REAL_PATH"])
def test_config_is_found_by_name_or_path_from_any_directory(spelling: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)  # outside the repository: nothing relative to it can be found
    value = str(CONFIG_DIR / "coco_s_960.yaml") if spelling == "REAL_PATH" else spelling
    printed = _printed(["fit", "--config", value], capsys)
    assert printed["data"]["image_size"] == 960 and printed["trainer"]["default_root_dir"] == "runs/coco_s_960"
    assert printed["model"]["lr"] == 0.01 and printed["data"]["train_ann"].endswith("person_keypoints_train2017.json")


def test_a_file_of_ones_own_wins_over_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo.yaml").write_text("model:\n  variant: m\n")
    assert find_config("demo.yaml") == Path("demo.yaml")
    assert _printed(["fit", "--config=demo.yaml"], capsys)["model"]["variant"] == "m"
    assert find_config("demo") == CONFIG_DIR / "demo.yaml"


def test_unknown_config_name_is_a_one_line_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match="--config coco_x_640: no such file and no shipped config"):
        resolve_configs(["fit", "--config", "coco_x_640"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", "nonexistent/dir/my.yaml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --config nonexistent/dir/my.yaml: no such file") and "coco_s_640" in err
    assert resolve_configs(["fit", "--config", "{model: {variant: s}}"])[-1] == "{model: {variant: s}}"


def test_a_config_of_an_older_layout_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A saved config naming a class path that moved (``yolopose.precise_bn`` became part of ``callbacks``) stops
    with one line naming the old and the new path, not jsonargparse's page-long traceback."""
    old = tmp_path / "old.yaml"
    old.write_text("trainer:\n  callbacks:\n    - class_path: yolopose.precise_bn.PreciseBatchNorm\n")
    for args in (["--config", str(old)], ["--trainer.callbacks+=yolopose.precise_bn.PreciseBatchNorm"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", "demo", *args, "--print_config"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err
        assert "yolopose.precise_bn.PreciseBatchNorm is now yolopose.callbacks.PreciseBatchNorm" in err


def test_console_scripts_point_at_entry_points() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"yolopose-train", "yolopose-export", "yolopose-predict"}
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), target


def test_configs_live_at_the_top_and_every_package_is_listed() -> None:
    tomllib = pytest.importorskip("tomllib")
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert CONFIG_DIR == ROOT / "configs" and shipped()  # one copy, beside train.py
    assert not list((ROOT / "yolopose").rglob("*.yaml"))
    assert tool["package-dir"]["yolopose.configs.shipped"] == "configs"
    assert tool["package-data"]["yolopose.configs.shipped"] == ["*.yaml"]
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "yolopose").rglob("__init__.py")}
    assert set(tool["packages"]) == packages | {"yolopose.configs.shipped"}  # a new subpackage must be listed


@pytest.mark.slow
def test_a_wheel_carries_every_module_and_the_configs(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    with zipfile.ZipFile(next(tmp_path.glob("yolopose-*.whl"))) as wheel:
        names = set(wheel.namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "yolopose").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert {f"yolopose/configs/shipped/{n}.yaml" for n in shipped()} <= names
    # Unpacked with no checkout around it, the package finds its configs by name in its own data package.
    site = tmp_path / "site"
    zipfile.ZipFile(next(tmp_path.glob("yolopose-*.whl"))).extractall(site)
    probe = "from yolopose.configs import CONFIG_DIR, find_config; print(CONFIG_DIR); print(find_config('demo'))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(site)}).stdout.split()
    assert out == [str(site / "yolopose/configs/shipped"), str(site / "yolopose/configs/shipped/demo.yaml")]


def test_no_arguments_run_the_shipped_demo_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    from yolopose import cli

    seen: list[list[str]] = []
    monkeypatch.setattr(cli, "PoseCLI", lambda *a, args, **kw: seen.append(args))
    monkeypatch.chdir(tmp_path)
    cli.main([])
    assert seen == [["fit", "--config", str(CONFIG_DIR / "demo.yaml")]]
    assert "running the synthetic demo (demo.yaml)" in capsys.readouterr().out


def _leaves(tree: dict, prefix: str = "") -> dict:
    """``{"section.key": value}`` of a YAML mapping's scalars and lists."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("overlay", sorted(n for n, base in BASE_OF.items() if base == "coco_base"))
def test_coco_overlay_is_its_base_plus_four_values(overlay: str, capsys: pytest.CaptureFixture) -> None:
    base = _leaves(yaml.safe_load((CONFIG_DIR / f"{BASE_OF[overlay]}.yaml").read_text()))
    own = _leaves(yaml.safe_load((CONFIG_DIR / f"{overlay}.yaml").read_text()))
    assert set(own) == {"trainer.default_root_dir", "model.variant", "data.image_size", "data.batch_size"}
    assert not set(own) & set(base)
    for spelling in (overlay, str(CONFIG_DIR / f"{overlay}.yaml")):  # by name or by its path: the base comes first
        printed = _leaves(_printed(["fit", "--config", spelling], capsys))
        for key, value in {**base, **own}.items():
            if key != "trainer.callbacks":  # a list of class specs: printed with the defaults filled in
                assert printed[key] == value, f"{overlay}: {key}"
    assert printed["model.variant"] == overlay.split("_")[1] and printed["data.image_size"] == int(overlay[-3:])


def test_every_coco_config_is_an_overlay_and_a_base_can_be_named_explicitly() -> None:
    assert sorted(BASE_OF) == [n for n in shipped() if n.startswith("coco_") and n != "coco_base"]
    base = str(CONFIG_DIR / "coco_base.yaml")
    assert resolve_configs(["fit", "--config", "coco_m_960"]) == ["fit", "--config", base, "--config",
                                                                  str(CONFIG_DIR / "coco_m_960.yaml")]
    assert resolve_configs(["fit", "--config=coco_base", "--config=x:{"]) == ["fit", f"--config={base}",
                                                                              "--config=x:{"]
