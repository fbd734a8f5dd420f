"""Ground truth fed as predictions scores AP = 1.0 through the real post-processing and pycocotools."""
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from yolopose.evaluation import CocoEvaluator, detections_to_records, gather_records
from yolopose.geometry import default_sigmas
from yolopose.postprocess import select_detections

K = 5


def _gt(num_images: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(num_images):
        h, w = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        images.append({"id": 100 + i, "file_name": f"{i}.jpg", "height": h, "width": w})
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = rng.uniform(30, w / 2), rng.uniform(30, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            kx, ky = rng.uniform(x, x + bw, K), rng.uniform(y, y + bh, K)
            v = rng.choice([0, 1, 2], K, p=[0.2, 0.2, 0.6])
            v[0] = 2
            kp = np.stack((np.where(v > 0, kx, 0), np.where(v > 0, ky, 0), v), 1)
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": 1, "iscrowd": 0,
                         "bbox": [x, y, bw, bh], "area": bw * bh, "num_keypoints": int((v > 0).sum()),
                         "keypoints": kp.reshape(-1).tolist()})
    cat = {"id": 1, "name": "person", "keypoints": [f"k{j}" for j in range(K)], "skeleton": []}
    return {"images": images, "annotations": anns, "categories": [cat]}


def test_gt_records_score_one() -> None:
    gt = _gt()
    records = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "keypoints": a["keypoints"],
                "score": 1.0} for a in gt["annotations"]]
    metrics = CocoEvaluator(gt, default_sigmas(K).numpy()).evaluate(records)
    for name in ("kpt_AP", "kpt_AP50", "kpt_AP75", "kpt_AR", "box_AP", "box_AP50"):
        assert metrics[name] == pytest.approx(1.0), name


def test_gt_through_letterbox_decode_nms_and_records_scores_one() -> None:
    """GT -> input pixels (letterbox) -> decoded tensor -> select_detections -> records -> AP 1.0."""
    gt = _gt(seed=1)
    size = 416
    evaluator = CocoEvaluator(gt, default_sigmas(K).numpy())
    records = []
    for img in gt["images"]:
        scale = size / max(img["height"], img["width"])
        pad = ((size - img["width"] * scale) / 2, (size - img["height"] * scale) / 2)
        rows = []
        for a in (a for a in gt["annotations"] if a["image_id"] == img["id"]):
            x, y, w, h = a["bbox"]
            box = [x * scale + pad[0], y * scale + pad[1], (x + w) * scale + pad[0], (y + h) * scale + pad[1]]
            kp = np.array(a["keypoints"], dtype=np.float64).reshape(K, 3)
            kp_in = np.stack((kp[:, 0] * scale + pad[0], kp[:, 1] * scale + pad[1], np.ones(K)), 1)
            rows.append(box + [0.9, 1.0] + kp_in.reshape(-1).tolist())
        noise = [[5, 5, 20, 20, 0.0005, 1.0] + [0.0] * (3 * K)] * 10       # below conf: dropped
        decoded = torch.tensor([rows + noise], dtype=torch.float32)
        det = select_detections(decoded, 1, conf_threshold=0.001, iou_threshold=0.65)
        assert det.num_dets.item() <= len(rows)
        meta = {"image_id": img["id"], "orig_size": (img["height"], img["width"]), "scale": scale, "pad": pad}
        records += detections_to_records(det.image(0), meta, [1])
    metrics = evaluator.evaluate(records)
    assert metrics["kpt_AP"] == pytest.approx(1.0) and metrics["box_AP"] == pytest.approx(1.0)
    # Predictions map back to original pixels: every record matches a GT keypoint set to 0.01 px.
    by_image = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(np.array(a["keypoints"]).reshape(K, 3))
    for r in records:
        kp = np.array(r["keypoints"]).reshape(K, 3)
        errs = [np.abs((kp[:, :2] - g[:, :2])[g[:, 2] > 0]).max() for g in by_image[r["image_id"]]]
        assert min(errs) < 0.01


def test_offline_rescoring_of_written_predictions_gives_same_numbers(tmp_path) -> None:
    gt = _gt(seed=2)
    rng = np.random.default_rng(0)
    records = []
    for a in gt["annotations"]:
        kp = np.array(a["keypoints"], dtype=float).reshape(K, 3)
        kp[:, :2] += rng.normal(0, 3, (K, 2))
        records.append({"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"],
                        "keypoints": kp.reshape(-1).tolist(), "score": float(rng.uniform(0.3, 1))})
    metrics = CocoEvaluator(gt, default_sigmas(K).numpy()).evaluate(records)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "predictions.json").write_text(json.dumps(records))
    coco = COCO(str(tmp_path / "gt.json"))
    ev = COCOeval(coco, coco.loadRes(str(tmp_path / "predictions.json")), "keypoints")
    ev.params.kpt_oks_sigmas = default_sigmas(K).numpy()
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert metrics["kpt_AP"] == pytest.approx(ev.stats[0]) and 0 < metrics["kpt_AP"] < 1


def test_empty_predictions_score_zero() -> None:
    metrics = CocoEvaluator(_gt(), default_sigmas(K).numpy()).evaluate([])
    assert all(v == 0 for v in metrics.values())


def test_gather_without_process_group_is_identity() -> None:
    recs = [{"image_id": 1}]
    assert gather_records(recs, [1, 2]) == (recs, {1, 2})
