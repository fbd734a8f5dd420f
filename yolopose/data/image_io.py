"""Decoding images from disk into RGB uint8 arrays, with EXIF orientation and a size check.

EXIF policy: OpenCV's ``IMREAD_COLOR`` applies the EXIF orientation tag (checked for both ``imread`` and
``imdecode`` with OpenCV 5.0), so by default an image is seen upright, as photo viewers and most modern
labelling tools show it. Annotation tools disagree on this, so the annotation file's own ``width`` /
``height`` decide: when the upright image has those sizes swapped but the stored (raw) pixel grid
matches them, the annotations were made on the raw grid and the raw grid is used. A 180-degree or
mirrored orientation keeps the size and cannot be detected this way; the upright image is used.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np

from yolopose.data.sample import DatasetError

log = logging.getLogger("yolopose.data")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class ImageReadError(OSError):
    """An image file is missing, cannot be decoded, or does not have the size its annotations say.

    ``path``: the image file (``None`` when the error is not about one file).
    """

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)


def read_image(path: Path | str, expected_hw: tuple[int, int] | None = None, bgr: bool = False) -> np.ndarray:
    """Decode ``path`` to ``(H, W, 3) uint8 RGB`` (grey and RGBA become 3-channel RGB).

    Args:
        path: image file.
        expected_hw: ``(height, width)`` the annotations were made at; ``None`` or zeros skip the check.
        bgr: return OpenCV's BGR order instead (saves a conversion when a later step converts anyway).
    Raises:
        ImageReadError: the file is missing/unreadable/undecodable, or its size differs from
            ``expected_hw`` in both the upright and the raw orientation.
    """
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read image file ({e.strerror or e})", path) from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageReadError(f"{path}: cannot decode image ({data.size} bytes)", path)
    if expected_hw is not None and all(expected_hw) and image.shape[:2] != tuple(expected_hw):
        h, w = image.shape[:2]
        raw = None
        if (w, h) == tuple(expected_hw):
            raw = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if raw is None or raw.shape[:2] != tuple(expected_hw):
            raise ImageReadError(f"{path}: image is {h}x{w} (HxW) but its annotations say "
                                 f"{expected_hw[0]}x{expected_hw[1]}", path)
        log.debug("%s: EXIF-rotated image annotated in its stored orientation; using the raw pixel grid", path)
        image = raw
    return image if bgr else cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)


def check_inside(root: Path, file_name: str, source: str, what: str) -> Path:
    """``root / file_name`` after checking that ``file_name`` is relative and does not leave ``root``.

    Raises:
        DatasetError: an absolute path, a drive letter, or a ``..`` component (``source`` and ``what``
            name the annotation file and the image entry in the message).
    """
    parts = file_name.replace("\\", "/").split("/")
    if not file_name or file_name.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", file_name):
        raise DatasetError(f"{source}: {what}: file_name {file_name!r} must be a path inside the image "
                           f"folder {root} (no absolute paths, no '..')")
    return root / file_name
