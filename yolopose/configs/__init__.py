"""The shipped training configs (YAML package data), found by bare name: ``--config coco_s_640``.

``python train.py fit --config NAME`` takes a file path or the name of a config here, with or without
``.yaml``; an old repo-relative path such as ``configs/demo.yaml`` that no longer exists also finds the
shipped file of that name. A non-editable ``pip install`` carries these files along.
"""
from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


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
