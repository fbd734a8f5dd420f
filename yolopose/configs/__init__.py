"""The shipped training configs, found by bare name: ``--config coco_s_640``.

They live (and are edited) in ``configs/`` at the top of the repository, beside ``train.py``. A wheel
(``pip install .``) installs that folder inside the package as the data package ``yolopose.configs.shipped``
(``pyproject.toml`` maps it), so an installed yolopose finds them with no checkout around it.

``python train.py fit --config NAME`` takes a file path or the name of a shipped config, with or without
``.yaml``; ``configs/demo.yaml`` also finds the shipped file of that name from any working directory.

The six ``coco_<variant>_<size>`` configs are overlays of four values on ``coco_base``: naming one (or
giving its path here) passes ``coco_base`` first, and jsonargparse merges the two in that order.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def _config_dir() -> Path:
    """The folder of the shipped YAMLs: the installed data package, else the checkout's ``configs/``."""
    spec = importlib.util.find_spec(f"{__name__}.shipped")  # found only in an installed wheel
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return Path(__file__).resolve().parents[2] / "configs"  # a source checkout (editable install included)


CONFIG_DIR = _config_dir()

BASE_OF = {f"coco_{variant}_{size}": "coco_base" for variant in "sml" for size in (640, 960)}
BASE_OF["coco_s_640_detector"] = "coco_s_640"
"""Shipped overlays -> the shipped config each one is applied on top of (itself possibly an overlay)."""


def shipped() -> list[str]:
    """Names of the shipped configs (file stems), sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def find_config(value: str) -> Path | None:
    """The file that ``--config value`` means: ``value`` itself when it is an existing file, else the
    shipped config named ``value`` (``demo``, ``demo.yaml``, or ``configs/demo.yaml`` from before the move),
    else ``None``."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if path.parent in (Path("."), Path("configs")) and path.suffix in ("", ".yaml"):
        stem = path.name[: -len(".yaml")] if path.suffix == ".yaml" else path.name
        if (CONFIG_DIR / f"{stem}.yaml").is_file():
            return CONFIG_DIR / f"{stem}.yaml"
    return None


def config_files(value: str) -> list[Path] | None:
    """The files, in merge order, that ``--config value`` stands for: ``find_config(value)``, preceded by its
    bases when it is a shipped overlay (see ``BASE_OF``); ``None`` when nothing is found."""
    path = find_config(value)
    if path is None:
        return None
    files = [path]
    while files[0].resolve().parent == CONFIG_DIR and files[0].stem in BASE_OF:
        files.insert(0, CONFIG_DIR / f"{BASE_OF[files[0].stem]}.yaml")
    return files
