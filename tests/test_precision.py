"""Decode, NMS and validation give the float32 result whatever the precision of the raw maps or of autocast."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from yolopose.assigner import AnchorAssigner
from yolopose.data.datamodule import PoseDataModule
from yolopose.geometry import decode
from yolopose.module import PoseModule
from yolopose.nn.head import PoseHead
from yolopose.nn.model import YOLOPose, default_anchors
from yolopose.postprocess import nms

K = 5
LOW = [torch.bfloat16, torch.float16]


def _raw_maps(size: int = 640, seed: int = 0) -> list[torch.Tensor]:
    """Raw maps of a 640 px input (P3-P6, A = 3, C = 1) with head-like values: keypoint offsets up to ~8 cells."""
    g = torch.Generator().manual_seed(seed)
    raws = []
    for s in (8, 16, 32, 64):
        r = torch.randn(1, 3, size // s, size // s, 6 + 3 * K, generator=g)
        r[..., 6:] *= 4
        raws.append(r)
    return raws


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
def test_low_precision_maps_decode_within_0_05_px_of_float32(dtype: torch.dtype) -> None:
    anchors, strides = torch.tensor(default_anchors(4)), [8, 16, 32, 64]
    low = [r.to(dtype) for r in _raw_maps()]
    ref = decode([r.float() for r in low], anchors, strides, 1)    # the same values, decoded in float32
    got = decode(low, anchors, strides, 1).float()
    xy = torch.cat((got[..., :4], got[..., 6:].unflatten(-1, (K, 3))[..., :2].flatten(-2)), -1)
    xy_ref = torch.cat((ref[..., :4], ref[..., 6:].unflatten(-1, (K, 3))[..., :2].flatten(-2)), -1)
    assert (xy - xy_ref).abs().max() < 0.05, "pixels"
    assert (got - ref).abs().max() < 0.05
    assert decode(low, anchors, strides, 1).dtype == torch.float32


def test_nms_on_fp16_boxes_equals_nms_on_float32() -> None:
    # Large people: areas above fp16's 65 504 px^2. Pairs at IoU 0.99 must suppress each other in both.
    base = torch.tensor([[10.0, 20.0, 310.0, 420.0], [330.0, 40.0, 630.0, 440.0], [100.0, 100.0, 160.0, 200.0]])
    twins = base + torch.tensor([1.0, 0.0, 1.0, 0.0])
    boxes = torch.cat((base, twins))
    scores = torch.tensor([0.9, 0.8, 0.7, 0.85, 0.75, 0.65])
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 600
    wh = torch.rand(200, 2, generator=g) * 400 + 8
    rand_boxes = torch.cat((xy, xy + wh), 1).round()                         # integers: exact in fp16
    rand_scores = torch.randperm(200, generator=g).float() / 256            # distinct, exact in fp16
    for b, s in ((boxes, scores), (rand_boxes, rand_scores)):
        want = nms(b, s, 0.65)
        got = nms(b.half(), s.half(), 0.65)
        assert got.tolist() == want.tolist()
    assert nms(boxes.half(), scores.half(), 0.65).tolist() == [0, 1, 2]    # each twin suppressed


def test_head_maps_are_float32_under_autocast() -> None:
    model = YOLOPose("n", num_keypoints=K, width=0.125, kpt_head_depth=1).eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        raws = model(x)
    assert all(r.dtype == torch.float32 for r in raws)


# --------------------------------------------------------------------------- a validation run under bf16-mixed
def _people(seed: int, n_images: int = 2, size: int = 640, n_people: int = 10) -> dict:
    """Small people (16-40 x 30-70 px) anywhere in 640 x 640 images: keypoint errors of a few pixels move OKS."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n_images):
        images.append({"id": i + 1, "file_name": f"{i + 1}.png", "height": size, "width": size})
        for _ in range(n_people):
            w, h = rng.uniform(16, 40), rng.uniform(30, 70)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            kp = np.stack((rng.uniform(x, x + w, K), rng.uniform(y, y + h, K), np.full(K, 2)), 1)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [x, y, w, h], "area": w * h, "num_keypoints": K, "keypoints": kp.reshape(-1).tolist()})
    cat = {"id": 1, "name": "person", "keypoints": [f"k{j}" for j in range(K)], "skeleton": []}
    return {"images": images, "annotations": anns, "categories": [cat]}


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


class OracleFeatures(nn.Module):
    """Stands in for backbone + neck: for each known image, features that the head's 1x1 prediction convs
    (set to copy their input) turn into raw maps decoding exactly to the image's ground truth."""

    def __init__(self, datamodule: PoseDataModule, anchors: torch.Tensor, strides: list[int]) -> None:
        super().__init__()
        self.features: dict[bytes, list[torch.Tensor]] = {}
        assigner = AnchorAssigner(anchors, strides)
        for batch in datamodule.val_dataloader():
            size = batch["images"].shape[-1]
            grids = [(size // s, size // s) for s in strides]
            for b in range(batch["images"].shape[0]):
                t = batch["targets"][batch["targets"][:, 0] == b].clone()
                t[:, 0] = 0
                raws = [torch.zeros(1, anchors.shape[1], h, w, 6 + 3 * K) for h, w in grids]
                for r in raws:
                    r[..., 4] = -12.0                                         # no object
                pos = assigner.assign(t, grids)
                seen: set[int] = set()
                for i in range(len(pos.level)):
                    ti = int(pos.target_index[i])
                    if ti in seen:                                            # one positive per person
                        continue
                    seen.add(ti)
                    cell = raws[int(pos.level[i])][0, int(pos.anchor[i]), int(pos.gy[i]), int(pos.gx[i])]
                    cell[0:2] = _logit((pos.box[i, :2] + 0.5) / 2)
                    cell[2:4] = _logit((pos.box[i, 2:4] / pos.anchor_wh[i]).sqrt() / 2)
                    cell[4] = 3.0 + 0.1 * ti                                  # distinct scores
                    kpt = torch.cat(((pos.keypoints[i, :, :2] + 0.5) / 2, torch.full((K, 1), 4.0)), 1)
                    cell[6:] = kpt.flatten()
                key = self._key(batch["images"][b:b + 1].float() / 255)
                self.features[key] = [r.permute(0, 1, 4, 2, 3).flatten(1, 2) for r in raws]   # (1, A*D, H, W)

    @staticmethod
    def _key(images: torch.Tensor) -> bytes:
        return (images[0, :, 200, 100:140] * 255).round().to(torch.uint8).numpy().tobytes()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        per_image = [self.features[self._key(images[b:b + 1])] for b in range(images.shape[0])]
        return [torch.cat(level) for level in zip(*per_image)]


def _oracle_module(dm: PoseDataModule) -> PoseModule:
    module = PoseModule(num_keypoints=K, variant="n", width=0.125, kpt_head_depth=0, ema_decay=0.0,
                        sigmas=dm.sigmas, channels_last=False)
    model = module.model
    a, d = model.num_anchors, 6 + 3 * K
    model.backbone = OracleFeatures(dm, model.anchors, model.strides)
    model.neck = nn.Identity()
    model.head = PoseHead([a * d] * 4, model.strides, num_anchors=a, num_classes=1, num_keypoints=K,
                          kpt_head_depth=0)
    with torch.no_grad():
        for det, kpt in zip(model.head.det, model.head.kpt):
            det.weight.zero_(), det.bias.zero_(), kpt[-1].weight.zero_(), kpt[-1].bias.zero_()
            for ai in range(a):
                for j in range(6):
                    det.weight[ai * 6 + j, ai * d + j] = 1.0
                for j in range(3 * K):
                    kpt[-1].weight[ai * 3 * K + j, ai * d + 6 + j] = 1.0
    return module


@pytest.fixture(scope="module")
def oracle_data(tmp_path_factory: pytest.TempPathFactory) -> PoseDataModule:
    root = tmp_path_factory.mktemp("people")
    coco = _people(seed=0)
    (root / "images").mkdir()
    for im in coco["images"]:
        pixels = np.random.default_rng(im["id"]).integers(0, 256, (im["height"], im["width"], 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / im["file_name"]), pixels)
    (root / "ann.json").write_text(json.dumps(coco))
    return PoseDataModule(format="coco", train_ann=str(root / "ann.json"), train_images=str(root / "images"),
                          val_ann=str(root / "ann.json"), val_images=str(root / "images"), image_size=640,
                          batch_size=2, num_workers=0)


def _validate(module: PoseModule, dm: PoseDataModule, precision: str, root: Path) -> dict[str, float]:
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=precision, logger=False, default_root_dir=root,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.validate(module, datamodule=dm, verbose=False)
    return module.last_metrics


def test_validation_under_bf16_mixed_gives_the_float32_ap(oracle_data: PoseDataModule, tmp_path: Path,
                                                          one_thread: None) -> None:
    """The real validation loop (Lightning's autocast, head, decode, NMS, pycocotools) on small people in 640 px
    images. (``16-mixed`` is not a CPU option: Lightning 2.6 falls back to ``bf16-mixed`` there.)"""
    module = _oracle_module(oracle_data)
    ref = _validate(module, oracle_data, "32", tmp_path)
    assert ref["kpt_AP"] > 0.9        # the oracle is right: AP is sensitive to pixel errors
    got = _validate(module, oracle_data, "bf16-mixed", tmp_path)
    for name in ("kpt_AP", "kpt_AP75", "box_AP"):
        assert got[name] == pytest.approx(ref[name], abs=0.002), name
