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


def _noisy_records(gt: dict, seed: int, extra_per_image: int = 3) -> list[dict]:
    """GT jittered by 0-8 px plus random false positives: APs strictly between 0 and 1, every area range used."""
    rng = np.random.default_rng(seed)
    records = []
    for a in gt["annotations"]:
        kp = np.array(a["keypoints"], dtype=float).reshape(K, 3)
        kp[:, :2] += rng.normal(0, rng.uniform(0, 8), (K, 2))
        kp[:, 2] = rng.uniform(0, 1, K)
        x, y, w, h = a["bbox"]
        box = [x + rng.normal(0, 4), y + rng.normal(0, 4), w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)]
        records.append({"image_id": a["image_id"], "category_id": 1, "bbox": [round(v, 2) for v in box],
                        "keypoints": kp.reshape(-1).round(3).tolist(), "score": round(float(rng.uniform(0.2, 1)), 5)})
    for img in gt["images"]:
        for _ in range(extra_per_image):
            w, h = rng.uniform(5, img["width"] / 2), rng.uniform(5, img["height"] / 2)
            x, y = rng.uniform(0, img["width"] - w), rng.uniform(0, img["height"] - h)
            kp = np.stack((rng.uniform(x, x + w, K), rng.uniform(y, y + h, K), rng.uniform(0, 1, K)), 1)
            records.append({"image_id": img["id"], "category_id": 1, "bbox": [x, y, w, h],
                            "keypoints": kp.reshape(-1).tolist(), "score": float(rng.uniform(0, 0.6))})
    return records


def test_metrics_equal_plain_pycocotools_and_records_untouched() -> None:
    """Our evaluation (box AP on area ``all`` only, shallow record copies) gives exactly pycocotools' numbers."""
    import copy

    gt = _gt(num_images=12, seed=3)
    gt["annotations"][0]["bbox"][2:] = [20.0, 20.0]          # a small object: area ranges differ
    gt["annotations"][0]["area"] = 400.0
    records = _noisy_records(gt, seed=4)
    before = copy.deepcopy(records)
    evaluator = CocoEvaluator(gt, default_sigmas(K).numpy())
    metrics = evaluator.evaluate(records)
    assert records == before
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    dt = coco.loadRes(copy.deepcopy(records))
    for iou_type, names in (("keypoints", {"kpt_AP": 0, "kpt_AP50": 1, "kpt_AP75": 2, "kpt_APm": 3, "kpt_APl": 4,
                                           "kpt_AR": 5}), ("bbox", {"box_AP": 0, "box_AP50": 1})):
        ev = COCOeval(coco, dt, iou_type)
        ev.params.kpt_oks_sigmas = default_sigmas(K).numpy()
        ev.evaluate(), ev.accumulate(), ev.summarize()
        for name, i in names.items():
            assert metrics[name] == max(float(ev.stats[i]), 0.0), name
    assert 0 < metrics["box_AP"] < 1 and 0 < metrics["kpt_AP"] < 1
    assert "maxDets=100 ] = " in evaluator.summary.split("--- bbox ---")[1]
    # a subset of images, as after a DDP gather
    ids = {100, 101, 105}
    sub = evaluator.evaluate(records, ids)
    ev = COCOeval(coco, coco.loadRes(copy.deepcopy(records)), "bbox")
    ev.params.imgIds = sorted(ids)
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert sub["box_AP"] == max(float(ev.stats[0]), 0.0) and sub["box_AP50"] == max(float(ev.stats[1]), 0.0)


def _loop_records(det, meta: dict, category_ids: list[int]) -> list[dict]:
    """The per-detection record builder this project used before it was vectorised (the reference)."""
    from yolopose.postprocess import undo_letterbox

    if int(det.num_dets) == 0:
        return []
    boxes, kpts = undo_letterbox(det.boxes.float(), det.keypoints.float(), meta["scale"], meta["pad"],
                                 meta["orig_size"])
    boxes, kpts = boxes.cpu().numpy(), kpts.cpu().numpy()
    scores, labels = det.scores.float().cpu().numpy(), det.labels.cpu().numpy()
    records = []
    for i in range(len(scores)):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        records.append({"image_id": int(meta["image_id"]), "category_id": int(category_ids[int(labels[i])]),
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "keypoints": [round(float(v), 3) for v in kpts[i].reshape(-1)],
                        "score": round(float(scores[i]), 5)})
    return records


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_records_equal_former_loop(seed: int) -> None:
    from yolopose.postprocess import Detections

    g = torch.Generator().manual_seed(seed)
    d = 200
    xy = torch.rand(d, 2, generator=g) * 700 - 30
    boxes = torch.cat((xy, xy + torch.rand(d, 2, generator=g) * 300), 1)
    kpts = torch.cat((torch.rand(d, K, 2, generator=g) * 800 - 50, torch.rand(d, K, 1, generator=g)), -1)
    kpts[0, :, :2] = torch.tensor([0.0625, -0.0625])          # exact ties at 3 decimals: half to even
    kpts[1, :, :2] = torch.tensor([-1e-5, 2.5e-3])           # rounds to -0.0
    boxes[2] = torch.tensor([10.125, 0.005, 10.375, 20.0])
    scores = torch.rand(d, generator=g)
    scores[0] = 0.5
    labels = torch.randint(0, 3, (d,), generator=g)
    det = Detections(torch.tensor(d), boxes, scores, labels, kpts)
    meta = {"image_id": np.int64(7), "orig_size": (480, 640), "scale": [1.0, 0.5, 0.83, 1.25][seed],
            "pad": [(0.0, 0.0), (0.0, 80.0), (12.5, 3.0), (7.0, 0.0)][seed]}
    got, want = detections_to_records(det, meta, [1, 5, 9]), _loop_records(det, meta, [1, 5, 9])
    assert json.dumps(got) == json.dumps(want)
    assert got == want and [type(v) for v in got[0].values()] == [type(v) for v in want[0].values()]
    assert detections_to_records(Detections(torch.tensor(0), boxes[:0], scores[:0], labels[:0], kpts[:0]),
                                 meta, [1]) == []


def test_labelled_image_metrics_equal_pycocotools_on_those_images() -> None:
    """``*_labelled_imgs`` = plain pycocotools with ``imgIds`` = the images with a labelled instance; images
    without one (none, only crowd, only ``num_keypoints == 0``) count in the plain metrics only."""
    import copy

    gt = _gt(num_images=10, seed=5)
    for i, extra in enumerate(({"iscrowd": 1}, {"num_keypoints": 0}, None)):
        gt["images"].append({"id": 200 + i, "file_name": f"x{i}.jpg", "height": 300, "width": 300})
        if extra is not None:
            gt["annotations"].append({"id": 900 + i, "image_id": 200 + i, "category_id": 1, "iscrowd": 0,
                                      "bbox": [10, 10, 100, 100], "area": 1e4, "num_keypoints": 5,
                                      "keypoints": [50, 50, 2] * K, **extra})
    records = _noisy_records(gt, seed=6)          # false positives on the person-free images too
    metrics = CocoEvaluator(gt, default_sigmas(K).numpy()).evaluate(records)
    labelled = sorted(im["id"] for im in gt["images"] if im["id"] < 200)
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    for iou_type, names in (("keypoints", {"kpt_AP": 0, "kpt_AP50": 1, "kpt_AP75": 2, "kpt_APm": 3, "kpt_APl": 4,
                                           "kpt_AR": 5}), ("bbox", {"box_AP": 0, "box_AP50": 1})):
        for ids, suffix in ((None, ""), (labelled, "_labelled_imgs")):
            ev = COCOeval(coco, coco.loadRes(copy.deepcopy(records)), iou_type)
            ev.params.kpt_oks_sigmas = default_sigmas(K).numpy()
            if ids is not None:
                ev.params.imgIds = ids
            ev.evaluate(), ev.accumulate(), ev.summarize()
            for name, i in names.items():
                assert metrics[name + suffix] == max(float(ev.stats[i]), 0.0), name + suffix
    assert metrics["kpt_AP_labelled_imgs"] > metrics["kpt_AP"]   # the false positives on empty images cost AP


def test_validation_evaluator_update_compute_write_reset(tmp_path) -> None:
    """The object validation holds: batches in, the same metrics as ``CocoEvaluator`` out, files written."""
    from yolopose.evaluation import ValidationEvaluator
    from yolopose.postprocess import Detections

    gt = _gt(num_images=3, seed=7)
    evaluator = ValidationEvaluator(gt, default_sigmas(K).numpy(), [1])
    metas, dets = [], []
    for img in gt["images"]:   # the GT as detections of an unscaled, unpadded input
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        kpts = torch.tensor([a["keypoints"] for a in anns]).reshape(len(anns), K, 3)
        dets.append(Detections(torch.tensor(len(anns)), boxes, torch.full((len(anns),), 0.9),
                               torch.zeros(len(anns), dtype=torch.long), kpts))
        metas.append({"image_id": img["id"], "orig_size": (img["height"], img["width"]), "scale": 1.0,
                      "pad": (0.0, 0.0)})
    for det, meta in zip(dets, metas):     # batches of one image, padded to a common D as select_detections does
        evaluator.update(Detections(det.num_dets[None], det.boxes[None], det.scores[None], det.labels[None],
                                    det.keypoints[None]), [meta])
    metrics = evaluator.compute()
    assert metrics["kpt_AP"] == pytest.approx(1.0) and metrics["box_AP_labelled_imgs"] == pytest.approx(1.0)
    evaluator.write(tmp_path, epoch=3)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["epoch"] == 3 and written["images"] == 3 and written["labelled_images"] == 3
    assert written["kpt_AP"] == metrics["kpt_AP"]
    records = json.loads((tmp_path / "predictions.json").read_text())
    assert len(records) == len(gt["annotations"]) and {r["image_id"] for r in records} == {100, 101, 102}
    evaluator.reset()
    assert evaluator.compute()["kpt_AP"] == 0.0        # nothing added since the reset
