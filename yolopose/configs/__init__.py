"""The shipped training configs (YAML package data), found by bare name: ``--config coco_s_640``.

``python train.py fit --config NAME`` takes a file path or the name of a config here, with or without
``.yaml``; an old repo-relative path such as ``configs/demo.yaml`` that no longer exists also finds the
shipped file of that name. A non-editable ``pip install`` carries these files along.

The six ``coco_<variant>_<size>`` configs are overlays of four values on ``coco_base``: naming one (or
giving its path here) passes ``coco_base`` first, and jsonargparse merges the two in that order.
"""
from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent

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
