"""Where does a checkpoint's keypoint AP go? Localisation vs selection, per keypoint and per level.

    python -m yolopose.tools.keypoint_report --weights best.ckpt --ann val.json --images val_dir [--image_size 640]

On a COCO-format split (the synthetic set's ``val.json`` works too) it prints three keypoint APs, all
through pycocotools with the checkpoint's sigmas:

- ``model``: what validation reports (decode, NMS, score ranking);
- ``best positive``: every person scored 1.0 with its ground-truth box and the keypoints of the assigned
  anchor whose keypoints are best. The ceiling of any better selection (NMS, scores) with these keypoints:
  far above ``model`` means selection loses AP, close to it means the keypoints themselves are the limit;
- ``mean pose in GT box``: the dataset's mean pose (the checkpoint's ``keypoint_prior``) placed in each
  ground-truth box, i.e. what a model that found every person but learned no pose would get.

Then, per keypoint, the median distance of the assigned anchors' predictions from the truth in units of
the object scale sqrt(box area), next to the same distance for the mean pose: a keypoint whose error is
not below the mean pose's has not been learned yet. Last, the mean OKS of the assigned anchors per level.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from yolopose.assigner import gather_positive_rows
from yolopose.data.datamodule import PoseDataModule
from yolopose.evaluation import CocoEvaluator, detections_to_records
from yolopose.geometry import cxcywh_to_xyxy, decode_keypoint_xy, keypoint_similarity
from yolopose.module import PoseModule
from yolopose.postprocess import undo_letterbox


def _record(meta: dict, category_id: int, box_cxcywh: torch.Tensor, kpt_xy: torch.Tensor) -> dict:
    """A COCO result (score 1) from a box ``(4,)`` cx, cy, w, h and keypoints ``(K, 2)`` in input pixels,
    mapped back to original pixels like validation's records (``undo_letterbox``)."""
    kpt = torch.cat((kpt_xy, torch.ones_like(kpt_xy[:, :1])), 1)[None]
    box, kpt = undo_letterbox(cxcywh_to_xyxy(box_cxcywh[None]), kpt, meta["scale"], meta["pad"], meta["orig_size"])
    x1, y1, x2, y2 = box[0].tolist()
    return {"image_id": int(meta["image_id"]), "category_id": category_id, "score": 1.0,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "keypoints": kpt.ravel().tolist()}


class KeypointReport:
    """Accumulates, batch by batch, the three sets of COCO records and the per-positive errors."""

    def __init__(self, module: PoseModule, prior: np.ndarray) -> None:
        self.m, self.prior = module, prior                   # prior (K, 2): offset from box centre in box w, h
        self.category_ids = module.hparams.category_ids or list(range(1, module.hparams.num_classes + 1))
        self.records: dict[str, list[dict]] = {"model": [], "best positive": [], "mean pose in GT box": []}
        self.image_ids: set[int] = set()
        self.errors, self.prior_errors, self.oks, self.levels = [], [], [], []

    @torch.no_grad()
    def add(self, batch: dict) -> None:
        m, crit = self.m, self.m.criterion
        raws = m(m.to_input(batch["images"]))
        det = m.select(raws)
        for i, meta in enumerate(batch["meta"]):
            self.records["model"] += detections_to_records(det.image(i), meta, self.category_ids)
            self.image_ids.add(int(meta["image_id"]))
        targets = batch["targets"].float()
        k = crit.num_keypoints
        gt_xy = targets[:, 6:].reshape(-1, k, 3)
        prior_xy = targets[:, None, 2:4] + torch.as_tensor(self.prior, dtype=torch.float32) * targets[:, None, 4:6]

        def record(t: int, kpt_xy: torch.Tensor) -> dict:
            return _record(batch["meta"][int(targets[t, 0])], self.category_ids[int(targets[t, 1])],
                           targets[t, 2:6], kpt_xy)

        self.records["mean pose in GT box"] += [record(t, prior_xy[t]) for t in range(len(targets))]
        scale = (targets[:, 4] * targets[:, 5]).sqrt()[:, None]
        prior_err = (prior_xy - gt_xy[..., :2]).norm(dim=-1) / scale
        self.prior_errors.append(prior_err.masked_fill(gt_xy[..., 2] <= 0, np.nan))
        pos = crit.assigner.assign(targets, [(r.shape[2], r.shape[3]) for r in raws], raws)
        if len(pos.level) == 0:
            return
        rows = gather_positive_rows(raws, pos)
        pxy = decode_keypoint_xy(rows[:, 5 + m.hparams.num_classes:].reshape(-1, k, 3)[..., :2])   # (P, K, 2) cells
        txy = pos.keypoints[..., :2]
        area = pos.box[:, 2] * pos.box[:, 3]
        oks = keypoint_similarity(pxy, txy, area, crit.sigmas)
        labelled = pos.keypoints[..., 2] > 0
        self.errors.append(((pxy - txy).norm(dim=-1) / area.sqrt()[:, None]).masked_fill(~labelled, np.nan))
        inst = (oks * labelled).sum(1) / labelled.sum(1).clamp(min=1)
        self.oks.append(inst)
        self.levels.append(pos.level)
        stride = torch.tensor(crit.strides, dtype=torch.float32)[pos.level][:, None, None]
        cell = torch.stack([pos.gx, pos.gy], 1).float()[:, None]
        for t in pos.target_index.unique().tolist():
            mine = torch.nonzero(pos.target_index == t).flatten()
            best = mine[inst[mine].argmax()]
            self.records["best positive"].append(record(t, (pxy[best] + cell[best]) * stride[best]))

    def print(self, evaluator: CocoEvaluator, names: list[str]) -> None:
        print("keypoint AP (pycocotools):")
        for name, records in self.records.items():
            met = evaluator.evaluate(records, self.image_ids)
            print(f"  {name:22s} AP {met['kpt_AP']:.3f}  AP50 {met['kpt_AP50']:.3f}  AP75 {met['kpt_AP75']:.3f}")
        err, prior_err = torch.cat(self.errors), torch.cat(self.prior_errors)
        print("median error / sqrt(box area), assigned anchors vs mean pose in GT box:")
        for j, name in enumerate(names):
            e, p = err[:, j].nanmedian().item(), prior_err[:, j].nanmedian().item()
            print(f"  {name:18s} {e:.3f}  vs {p:.3f}{'   (not learned yet)' if e >= p else ''}")
        oks, levels = torch.cat(self.oks), torch.cat(self.levels)
        print("mean OKS of the assigned anchors (box area as scale, as in training), per level:")
        for lv, stride in enumerate(self.m.criterion.strides):
            sel = levels == lv
            if sel.any():
                level = f"P{int(np.log2(stride))} (stride {stride})"
                print(f"  {level}: {oks[sel].mean():.3f} over {int(sel.sum())} anchors")


def parser() -> argparse.ArgumentParser:
    """The command line (``--ckpt``, ``--imgsz`` and ``--batch`` are kept as aliases of the shared names)."""
    p = argparse.ArgumentParser(prog="python -m yolopose.tools.keypoint_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", "--ckpt", dest="weights", required=True, help="a training checkpoint (.ckpt)")
    p.add_argument("--ann", required=True, help="COCO keypoints JSON of the split to examine")
    p.add_argument("--images", required=True, help="folder that the JSON's file_name entries are relative to")
    p.add_argument("--image_size", "--imgsz", dest="image_size", type=int, default=640,
                   help="network input size (default 640)")
    p.add_argument("--batch_size", "--batch", dest="batch_size", type=int, default=16)
    return p


def main(argv: list[str] | None = None) -> int:
    """Print the report for a checkpoint on a COCO split; 0 on success."""
    a = parser().parse_args(sys.argv[1:] if argv is None else argv)
    module = PoseModule.load_from_checkpoint(a.weights, map_location="cpu").eval()
    data = PoseDataModule(format="coco", train_ann=a.ann, train_images=a.images, val_ann=a.ann, val_images=a.images,
                          image_size=a.image_size, batch_size=a.batch_size, num_workers=0)
    if data.num_keypoints != module.hparams.num_keypoints:
        raise SystemExit(f"{a.ann}: K={data.num_keypoints} but {a.weights} has K={module.hparams.num_keypoints}")
    prior = module.hparams.keypoint_prior or data.keypoint_prior
    report = KeypointReport(module, np.asarray(prior, dtype=np.float32))
    for batch in data.val_dataloader():
        report.add(batch)
    names = module.hparams.keypoint_names or [f"keypoint {j}" for j in range(data.num_keypoints)]
    report.print(CocoEvaluator(data.val_coco_gt(), module.sigmas), names)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
