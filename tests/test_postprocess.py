"""NMS against a brute-force reference, and detection selection."""
import pytest
import torch

from yolopose.geometry import box_iou
from yolopose.postprocess import nms, nms_op, select_detections, undo_letterbox


def _brute_force_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i].item(), i))
    kept: list[int] = []
    for i in order:
        if all(box_iou(boxes[i:i + 1], boxes[j:j + 1]).item() <= thr for j in kept):
            kept.append(i)
    return kept


def _random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 40 + 1
    return torch.cat((xy, xy + wh), 1), torch.rand(n, generator=g)


def test_nms_matches_brute_force_on_random_boxes() -> None:
    for seed in range(20):
        boxes, scores = _random_boxes(60, seed)
        for thr in (0.3, 0.5, 0.7):
            assert nms(boxes, scores, thr).tolist() == _brute_force_nms(boxes, scores, thr)


def test_nms_matches_brute_force_across_several_blocks() -> None:
    """More boxes than one block of the blocked implementation, with tied scores and max_keep."""
    for seed in range(3):
        boxes, scores = _random_boxes(300, 100 + seed)
        scores = (scores * 20).round() / 20                          # many exact ties
        expected = _brute_force_nms(boxes, scores, 0.5)
        assert nms(boxes, scores, 0.5).tolist() == expected
        assert nms(boxes, scores, 0.5, max_keep=7).tolist() == expected[:7]


def test_nms_matches_brute_force_on_long_suppression_chains() -> None:
    """A row of boxes, each overlapping the next above the threshold but not the one after: greedy keeps every other
    box, a dependency chain as long as the row, across blocks."""
    from yolopose.postprocess import NMS_BLOCK

    n = NMS_BLOCK + 40
    x = torch.arange(n, dtype=torch.float32) * 2.0
    boxes = torch.stack((x, torch.zeros(n), x + 10, torch.full((n,), 10.0)), 1)   # neighbours: IoU 0.67
    scores = torch.linspace(1, 0.5, n)
    expected = _brute_force_nms(boxes, scores, 0.6)
    assert len(expected) > 100 and expected[:3] == [0, 2, 4]
    assert nms(boxes, scores, 0.6).tolist() == expected
    assert nms(boxes, scores, 0.6, max_keep=300).tolist() == expected[:300]


def test_nms_op_follows_onnx_semantics() -> None:
    boxes, scores = _random_boxes(50, 3)
    two = torch.stack((scores, 1 - scores))                         # (C=2, N)
    sel = nms_op(boxes[None].repeat(2, 1, 1), two[None].repeat(2, 1, 1), 5, 0.5, 0.3)
    assert sel.dtype == torch.int64 and sel.shape[1] == 3
    for b in range(2):
        for c in range(2):
            rows = sel[(sel[:, 0] == b) & (sel[:, 1] == c), 2]
            expected = [i for i in _brute_force_nms(boxes, two[c], 0.5) if two[c, i] > 0.3][:5]
            assert rows.tolist() == expected


def _decoded(boxes: torch.Tensor, obj: torch.Tensor, cls: torch.Tensor, k: int = 2) -> torch.Tensor:
    n = len(boxes)
    kpts = torch.cat((boxes[:, None, :2].repeat(1, k, 1), torch.ones(n, k, 1)), -1).flatten(1)
    return torch.cat((boxes, obj[:, None], cls, kpts), 1)[None]


def test_select_detections_static_shapes_and_order() -> None:
    boxes, scores = _random_boxes(80, 5)
    dec = _decoded(boxes, scores, torch.ones(80, 1))
    det = select_detections(dec, 1, conf_threshold=0.2, iou_threshold=0.5, max_det=300)
    assert det.boxes.shape == (1, 300, 4) and det.keypoints.shape == (1, 300, 2, 3) and det.scores.shape == (1, 300)
    expected = [i for i in _brute_force_nms(boxes, scores, 0.5) if scores[i] > 0.2]
    assert det.num_dets.item() == len(expected)
    assert torch.allclose(det.boxes[0, :len(expected)], boxes[expected])
    assert (det.scores[0, len(expected):] == 0).all()
    assert torch.allclose(det.keypoints[0, :len(expected), 0, :2], boxes[expected, :2])


def test_select_detections_is_class_aware_and_respects_max_det() -> None:
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(2, 1)
    cls = torch.tensor([[0.9, 0.1], [0.1, 0.9]])                    # same box, two classes
    det = select_detections(_decoded(box, torch.ones(2), cls), 2, 0.1, 0.5, max_det=10)
    assert det.num_dets.item() == 2 and sorted(det.labels[0, :2].tolist()) == [0, 1]
    boxes, scores = _random_boxes(200, 7)
    det = select_detections(_decoded(boxes * 10, scores, torch.ones(200, 1)), 1, 0.0, 0.5, max_det=7)
    assert det.num_dets.item() == 7
    assert torch.allclose(det.scores[0], scores.sort(descending=True).values[:7])


def test_zero_detections_when_nothing_passes() -> None:
    boxes, scores = _random_boxes(30, 1)
    dec = torch.cat((_decoded(boxes, scores * 0.01, torch.ones(30, 1)),) * 3)
    det = select_detections(dec, 1, conf_threshold=0.5)
    assert det.num_dets.tolist() == [0, 0, 0] and det.boxes.abs().sum() == 0


def test_batched_equals_single() -> None:
    a, sa = _random_boxes(40, 11)
    b, sb = _random_boxes(40, 12)
    da, db = _decoded(a, sa, torch.ones(40, 1)), _decoded(b, sb, torch.ones(40, 1))
    both = select_detections(torch.cat((da, db)), 1, 0.1, 0.5, 50)
    for i, single in enumerate((select_detections(da, 1, 0.1, 0.5, 50), select_detections(db, 1, 0.1, 0.5, 50))):
        assert torch.equal(both.num_dets[i], single.num_dets[0])
        assert torch.allclose(both.boxes[i], single.boxes[0])


def test_undo_letterbox_inverts_forward_mapping() -> None:
    orig = torch.tensor([[10.0, 20.0, 110.0, 220.0]])
    kp = torch.tensor([[[15.0, 25.0, 0.9]]])
    scale, pad = 0.5, (32.0, 7.0)
    fwd_b = orig * scale + torch.tensor([32.0, 7.0, 32.0, 7.0])
    fwd_k = kp.clone()
    fwd_k[..., 0] = kp[..., 0] * scale + 32
    fwd_k[..., 1] = kp[..., 1] * scale + 7
    b, k = undo_letterbox(fwd_b, fwd_k, scale, pad, (300, 400))
    assert torch.allclose(b, orig) and torch.allclose(k, kp)


@pytest.mark.parametrize("classes", [1, 3])
def test_eager_shortcuts_give_the_static_graphs_detections(monkeypatch: pytest.MonkeyPatch, classes: int) -> None:
    """Eager ``select_detections`` (kept rows marked by indexing) returns exactly what the traced, static-shaped
    path (one-hot MatMul) returns, ties and images with nothing above conf included."""
    import yolopose.postprocess as pp

    g = torch.Generator().manual_seed(classes)
    b, n, k = 3, 3000, 2
    xy = torch.rand(b, n, 2, generator=g) * 3000                     # sparse: most candidates survive NMS
    boxes = torch.cat((xy, xy + 10 + torch.rand(b, n, 2, generator=g) * 60), -1)
    obj = torch.rand(b, n, 1, generator=g) ** 20                      # ~6 % above 0.3, ~18 % above 0.02
    obj[0, :50] = 0.5                                                 # exact ties
    obj[2] = 0.0005                                                   # an image with nothing above conf
    cls = torch.rand(b, n, classes, generator=g)
    decoded = torch.cat((boxes, obj, cls, torch.rand(b, n, 3 * k, generator=g)), -1)
    for conf, top_k, max_det in ((0.3, 30000, 300), (0.02, 30000, 300), (0.001, 1000, 100), (0.3, 30000, 5)):
        eager = select_detections(decoded, classes, conf, 0.65, max_det, top_k)
        monkeypatch.setattr(pp, "tracing", lambda: True)
        static = select_detections(decoded, classes, conf, 0.65, max_det, top_k)
        monkeypatch.undo()
        assert eager.num_dets.tolist() == static.num_dets.tolist() and int(eager.num_dets[0]) > 0
        assert int(eager.num_dets[2]) == 0
        for name in ("boxes", "scores", "labels", "keypoints"):
            assert torch.equal(getattr(eager, name), getattr(static, name)), (conf, top_k, name)
