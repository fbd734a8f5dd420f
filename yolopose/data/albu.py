"""The albumentations stage: transforms from albumentations' catalogue applied to a rendered training ``Item``
after our own geometry (mosaic + affine + flip, ``augment.py``), with its boxes and keypoints.

Configuration (``--data.albumentations``): a list whose entries are either the LightningCLI style
``{"class_path": "Blur", "init_args": {"p": 0.1}}`` (``class_path`` is a class of ``albumentations``, bare or
dotted; a composition such as ``OneOf`` takes its ``transforms`` as entries of the same form) or a dict of
``A.to_dict`` / ``A.from_dict`` (``{"__class_fullname__": "Blur", "p": 0.1}``). Every entry is built, checked
for unknown arguments and tried once on a blank ``S x S`` item when the stage is constructed, so a bad entry
stops the run before training with one line naming it.

Labels: boxes (persons and crowd regions) go through ``BboxParams`` and labelled keypoints through
``KeypointParams(remove_invisible=False)``, each with its index as label field, so every surviving box finds
its own keypoints again. Albumentations' keypoints sit on pixel-centre indices (a flip is ``W - 1 - x``)
while ours are continuous (``x -> W - x``): they are shifted by half a pixel on the way in and out, which
keeps boxes, keypoints and pixels in one frame. Boxes are checked only once, after the last transform
(``check_each_transform=False``), with our thresholds (a box must keep >= ``MIN_BOX_AREA_FRAC`` of its
transformed area in view and sides >= ``MIN_BOX_SIDE``; crowd regions included); then
``transforms.filter_labels`` clips boxes and masks keypoints outside the image, as after our geometry.

Mirroring: a top-level ``HorizontalFlip``, ``VerticalFlip``, ``Transpose``, ``D4`` or ``SquareSymmetry``
is read back from ``save_applied_params`` and an odd number of mirrors swaps left/right keypoints
(``flip_index``). Inside a composition the applied parameters are not reported, so a mirror there is refused.

A stage of pixel-level transforms only (the default) leaves labels alone and runs on the image alone.
Randomness comes from a seed the caller draws from its own generator, so runs stay reproducible.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import inspect
import random
import warnings
from typing import Any, Iterator

import albumentations as A
import numpy as np

from yolopose.data.sample import DatasetError
from yolopose.data.transforms import FILL_VALUE, MIN_BOX_AREA_FRAC, MIN_BOX_SIDE, Item, filter_labels, swap_left_right

# YOLOv5/YOLOv8's albumentations recipe (its first four; ImageCompression, which it lists at p = 0, switched
# on): pixel-level only, so labels stay untouched; p = 0.01 each. Why: docs/augmentation.md.
DEFAULT_ALBUMENTATIONS: list[dict[str, Any]] = [
    {"class_path": "Blur", "init_args": {"blur_limit": [3, 7], "p": 0.01}},
    {"class_path": "MedianBlur", "init_args": {"blur_limit": [3, 7], "p": 0.01}},
    {"class_path": "ToGray", "init_args": {"p": 0.01}},
    {"class_path": "CLAHE", "init_args": {"clip_limit": [1, 4], "tile_grid_size": [8, 8], "p": 0.01}},
    {"class_path": "ImageCompression", "init_args": {"quality_range": [75, 100], "p": 0.01}},
]

MIRRORS = {"HorizontalFlip", "VerticalFlip", "Transpose"}  # always a reflection when applied
GROUPS = {"D4", "SquareSymmetry"}  # a reflection for these group elements
REFLECTIONS = {"h", "v", "t", "hvt"}
FIELD = "data.albumentations"


def _one_line(exc: BaseException) -> str:
    """An exception as one line; pydantic's validation errors (albumentations wraps them) as ``field: message``."""
    seen: BaseException | None = exc
    while seen is not None:
        errors = getattr(seen, "errors", None)
        if callable(errors):
            try:
                return "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())) or 'value'}: {e.get('msg')}"
                                 for e in errors())
            except Exception:  # noqa: BLE001 - not pydantic after all: use the text
                break
        seen = seen.__cause__ or seen.__context__
    return " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def _unknown_arguments_raise() -> Iterator[None]:
    """Albumentations only warns about an argument a transform does not take: make that an error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if "are not valid for transform" in str(w.message):
            raise ValueError(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _resolve_class(path: str, where: str) -> type:
    """``Blur``, ``A.Blur``, ``albumentations.Blur`` or a full module path -> the transform class."""
    name = path.rsplit(".", 1)[-1]
    module = path.rsplit(".", 1)[0] if "." in path else "albumentations"
    if module in ("A", "albumentations"):
        cls = getattr(A, name, None)
    elif module.split(".")[0] == "albumentations":
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
    else:
        raise DatasetError(f"{where}: {path!r} is not an albumentations transform (class_path must name a class "
                           f"of albumentations, e.g. 'Blur' or 'albumentations.Blur')")
    if not (isinstance(cls, type) and issubclass(cls, (A.BasicTransform, A.BaseCompose))):
        raise DatasetError(f"{where}: unknown albumentations transform {path!r} (albumentations {A.__version__})")
    return cls


def build_transform(entry: Any, where: str, nested: bool = False) -> A.BasicTransform | A.BaseCompose:
    """One config entry -> an albumentations transform; ``DatasetError`` naming ``where`` on any problem.

    Mirrors inside a composition (``nested``) are refused: their applied parameters are not reported.
    """
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected a mapping with class_path/init_args (or an A.to_dict mapping), "
                           f"got {entry!r}")
    if "__class_fullname__" in entry:
        name = str(entry["__class_fullname__"])
        _resolve_class(name, f"{where} ({name})")
        try:
            with _unknown_arguments_raise():
                transform = A.from_dict({"transform": copy.deepcopy(entry)})
        except Exception as exc:  # noqa: BLE001 - any construction problem is a config problem
            raise DatasetError(f"{where} ({name}): {_one_line(exc)}") from None
        _check_mirrors(transform, where, nested)
        return transform
    unknown_keys = set(entry) - {"class_path", "init_args"}
    if "class_path" not in entry or unknown_keys:
        raise DatasetError(f"{where}: expected keys class_path and init_args, got {sorted(entry)}")
    path = str(entry["class_path"])
    label = f"{where} ({path})"
    cls = _resolve_class(path, label)
    args = dict(entry.get("init_args") or {})
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(args) - set(params))
        if unknown:
            raise DatasetError(f"{label}: unknown argument(s) {', '.join(unknown)}; "
                               f"{cls.__name__} takes {', '.join(params)}")
    if issubclass(cls, A.BaseCompose):
        children = args.get("transforms")
        if not isinstance(children, list) or not children:
            raise DatasetError(f"{label}: init_args.transforms must be a non-empty list of entries")
        args["transforms"] = [build_transform(c, f"{label}.transforms[{i}]", nested=True)
                              for i, c in enumerate(children)]
    elif nested and cls.__name__ in MIRRORS | GROUPS:
        _refuse_mirror(cls.__name__, label)
    try:
        with _unknown_arguments_raise():
            return cls(**args)
    except Exception as exc:  # noqa: BLE001 - pydantic ValidationError, TypeError, ValueError, warnings
        raise DatasetError(f"{label}: {_one_line(exc)}") from None


def _refuse_mirror(name: str, label: str) -> None:
    raise DatasetError(f"{label}: {name} mirrors the image inside a composition, where the left/right keypoint "
                       f"swap cannot be applied; put it at the top level of {FIELD} or use --data.fliplr")


def _check_mirrors(transform: Any, where: str, nested: bool) -> None:
    """Refuse mirrors below the top level of a transform built by ``A.from_dict``."""
    name = type(transform).__name__
    if nested and name in MIRRORS | GROUPS:
        _refuse_mirror(name, f"{where} ({name})")
    for child in getattr(transform, "transforms", []) if isinstance(transform, A.BaseCompose) else []:
        _check_mirrors(child, where, nested=True)


def is_mirrored(applied: list[tuple[str, dict]]) -> bool:
    """Whether the transforms albumentations reports as applied mirror the image an odd number of times."""
    count = 0
    for name, params in applied:
        if name in MIRRORS or (name in GROUPS and str(params.get("group_element")) in REFLECTIONS):
            count += 1
    return count % 2 == 1


def _pixel_only(transform: Any) -> bool:
    if isinstance(transform, A.BaseCompose):
        return all(_pixel_only(t) for t in transform.transforms)
    return isinstance(transform, A.ImageOnlyTransform)


class AlbumentationsStage:
    """Albumentations transforms on ``S x S`` training items (see the module docstring).

    Args:
        entries: the configured list (``class_path``/``init_args`` or ``A.to_dict`` mappings).
        size: the item side S; the stage must keep it.

    The keypoints' mirror partners (``flip_index``) come with each call, so the stage (and every check of
    its entries) is built before the dataset is read.
    """

    def __init__(self, entries: list[dict[str, Any]], size: int) -> None:
        if not isinstance(entries, (list, tuple)):
            raise DatasetError(f"{FIELD}: expected a list of transforms, got {entries!r}")
        self.size = size
        transforms = [build_transform(e, f"{FIELD}[{i}]") for i, e in enumerate(entries)]
        self.pixel_only = all(_pixel_only(t) for t in transforms)
        self.mirrors = any(type(t).__name__ in MIRRORS | GROUPS for t in transforms)  # read back what was applied
        self.compose = self._compose(transforms)
        self._try(entries, transforms)

    def _compose(self, transforms: list) -> A.Compose:
        """Transforms with label processing, or without it when they are all pixel-level."""
        if all(_pixel_only(t) for t in transforms):
            return A.Compose(transforms)
        bbox = A.BboxParams(format="pascal_voc", label_fields=["box_ids"], min_visibility=MIN_BOX_AREA_FRAC,
                            min_width=MIN_BOX_SIDE, min_height=MIN_BOX_SIDE, check_each_transform=False)
        keypoints = A.KeypointParams(format="xy", label_fields=["keypoint_ids"], remove_invisible=False,
                                     check_each_transform=False)
        return A.Compose(transforms, bbox_params=bbox, keypoint_params=keypoints,
                         save_applied_params=self.mirrors)

    def _try(self, entries: list[dict], transforms: list) -> None:
        """Run the transforms one after the other, each forced on, on a blank item: a transform that fails
        stops here, and so does a stage whose output is not S x S (naming the last entry that resized)."""
        s, k = self.size, 3
        item = Item(np.full((s, s, 3), FILL_VALUE, np.uint8), np.array([[s / 4, s / 4, 3 * s / 4, 3 * s / 4]],
                    np.float32), np.tile(np.array([s / 2, s / 2, 2], np.float32), (1, k, 1)), np.zeros(1, np.int64),
                    np.zeros((0, 4), np.float32), {})
        resized = None
        for i, (entry, transform) in enumerate(zip(entries, transforms)):
            where = f"{FIELD}[{i}] ({entry.get('class_path') or entry.get('__class_fullname__')})"
            saved_p, transform.p = transform.p, 1.0
            before = item.image.shape
            try:
                item = self._apply(self._compose([transform]), item, 0, np.arange(k), check=False)
            except Exception as exc:  # noqa: BLE001 - e.g. a transform that needs masks
                raise DatasetError(f"{where}: fails on a {before[1]}x{before[0]} image: {_one_line(exc)}") from None
            finally:
                transform.p = saved_p
            if item.image.shape != before:
                resized = where
        if item.image.shape != (s, s, 3):
            raise DatasetError(f"{resized}: {FIELD} turns a {s}x{s} image into {item.image.shape[1]}x"
                               f"{item.image.shape[0]}: spatial transforms must keep data.image_size "
                               f"(e.g. RandomResizedCrop size: [{s}, {s}])")

    def to_dict(self) -> dict:
        """The stage in albumentations' own serialisation (``A.to_dict``)."""
        return A.to_dict(self.compose)

    def __call__(self, item: Item, seed: int, flip_index: np.ndarray) -> Item:
        """Augment ``item`` (its image in place where possible) with the transforms' randomness drawn from
        ``seed``; ``flip_index (K,)``: mirror partner of each keypoint."""
        return self._apply(self.compose, item, seed, flip_index)

    def _apply(self, compose: A.Compose, item: Item, seed: int, flip_index: np.ndarray, check: bool = True) -> Item:
        """``item`` (``boxes (N, 4)``, ``keypoints (N, K, 3)``, ``crowd_boxes (M, 4)``) through ``compose``;
        ``check``: the image must stay S x S (the dry run checks the whole stage instead)."""
        compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        if not compose.processors:  # pixel-level only: the labels stay as they are
            item.image = compose(image=item.image)["image"]
            return item
        n, k = item.keypoints.shape[:2]
        flat = item.keypoints.reshape(n * k, 3)
        labelled = np.flatnonzero(flat[:, 2] > 0)
        boxes = np.concatenate([item.boxes, item.crowd_boxes]).astype(np.float32).reshape(-1, 4)
        out = compose(image=item.image, bboxes=boxes, box_ids=np.arange(len(boxes)),
                      keypoints=flat[labelled, :2] - 0.5, keypoint_ids=labelled)  # to pixel-centre indices
        image = out["image"]
        if check and image.shape != (self.size, self.size, 3):
            raise DatasetError(f"{FIELD} turned a {self.size}x{self.size} image into "
                               f"{image.shape[1]}x{image.shape[0]}: spatial transforms must keep data.image_size")
        moved = np.zeros_like(flat)
        ids = np.asarray(out["keypoint_ids"], np.int64)
        moved[ids, :2] = np.asarray(out["keypoints"], np.float32).reshape(-1, 2)[:, :2] + 0.5  # back to continuous
        moved[ids, 2] = flat[ids, 2]
        box_ids = np.asarray(out["box_ids"], np.int64)
        new_boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        person = box_ids < n
        kept = box_ids[person]
        keypoints = moved.reshape(n, k, 3)[kept]
        if self.mirrors and is_mirrored(out["applied_transforms"]):
            keypoints = swap_left_right(keypoints, flip_index)
        boxes, keypoints, classes, crowd = filter_labels(new_boxes[person], keypoints, item.classes[kept],
                                                         new_boxes[~person], image.shape[1])
        return dataclasses.replace(item, image=np.ascontiguousarray(image), boxes=boxes, keypoints=keypoints,
                                   classes=classes, crowd_boxes=crowd)   # every other field (meta, skip counts) kept
