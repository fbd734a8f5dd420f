"""Assignment and loss invariants."""
import pytest
import torch

from yolopose import YOLOPose
from yolopose.assigner import AnchorAssigner
from yolopose.geometry import default_sigmas
from yolopose.loss import PoseLoss

K = 5


def _targets(rows: list[tuple[int, float, float, float, float]], k: int = K, v: float = 2.0,
             seed: int = 0) -> torch.Tensor:
    """Targets with keypoints spread inside each box."""
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(len(rows), 6 + 3 * k)
    for i, (b, cx, cy, w, h) in enumerate(rows):
        t[i, :6] = torch.tensor([b, 0, cx, cy, w, h])
        t[i, 6::3] = cx + (torch.rand(k, generator=g) - 0.5) * w
        t[i, 7::3] = cy + (torch.rand(k, generator=g) - 0.5) * h
        t[i, 8::3] = v
    return t


def _setup(k: int = K, size: int = 256) -> tuple[YOLOPose, PoseLoss, list[tuple[int, int]]]:
    torch.manual_seed(0)
    model = YOLOPose("n", num_keypoints=k)
    loss = PoseLoss(k, 1, model.anchors, model.strides, default_sigmas(k))
    grids = [(size // s, size // s) for s in model.strides]
    return model, loss, grids


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p / (1 - p))


def _encode_exact(raws: list[torch.Tensor], loss: PoseLoss, targets: torch.Tensor, shift: float = 0.0) -> None:
    """Write raw values at every positive that decode exactly to its target (keypoints shifted by ``shift`` cells)."""
    levels = loss.assigner(targets, [(r.shape[2], r.shape[3]) for r in raws])
    for raw, lt in zip(raws, levels):
        idx = (lt.batch, lt.anchor, lt.gy, lt.gx)
        raw[idx + (slice(0, 2),)] = _logit((lt.box[:, :2] + 0.5) / 2)
        raw[idx + (slice(2, 4),)] = _logit((lt.box[:, 2:4] / lt.anchor_wh).sqrt() / 2)
        kx = (lt.keypoints[..., :2] + shift + 0.5) / 2
        raw[idx + (slice(6, None),)] = torch.cat((kx, torch.zeros_like(kx[..., :1])), -1).flatten(1)


def test_every_ground_truth_gets_a_positive() -> None:
    _, loss, grids = _setup()
    g = torch.Generator().manual_seed(1)
    n = 200
    wh = torch.exp(torch.rand(n, 2, generator=g) * 6.5)           # 1 px .. 665 px, any aspect
    wh[:3] = torch.tensor([[1.0, 1.0], [2.0, 40.0], [255.0, 3.0]])  # far outside every anchor ratio
    cxy = torch.rand(n, 2, generator=g) * 256
    rows = [(i % 4, *cxy[i].tolist(), *wh[i].tolist()) for i in range(n)]
    levels = loss.assigner(_targets(rows), grids)
    matched = torch.cat([lt.target_index for lt in levels]).unique()
    assert matched.tolist() == list(range(n))
    for lt, (h, w) in zip(levels, grids):
        assert ((lt.gx >= 0) & (lt.gx < w) & (lt.gy >= 0) & (lt.gy < h)).all()


def test_assigner_uses_own_cell_and_two_nearest_neighbours() -> None:
    assigner = AnchorAssigner(torch.tensor([[[16.0, 16.0]]]), [8], anchor_t=4.0)
    # centre at (x=21, y=35) px = cell (2.625, 4.375): right neighbour (x=3) and upper neighbour (y=3).
    lt = assigner(_targets([(0, 21.0, 35.0, 16.0, 16.0)]), [(8, 8)])[0]
    cells = sorted(zip(lt.gx.tolist(), lt.gy.tolist()))
    assert cells == [(2, 3), (2, 4), (3, 4)]
    # the box offset is relative to each cell and inside the decodable range (-0.5, 1.5)
    assert ((lt.box[:, :2] > -0.5) & (lt.box[:, :2] < 1.5)).all()


def test_ratio_test_rejects_mismatched_anchor() -> None:
    anchors = torch.tensor([[[10.0, 10.0], [100.0, 100.0]]])
    lt = AnchorAssigner(anchors, [8])(_targets([(0, 32.0, 32.0, 90.0, 110.0)]), [(8, 8)])[0]
    assert set(lt.anchor.tolist()) == {1}


def test_keypoint_loss_zero_at_exact_keypoints_and_grows_with_distance() -> None:
    model, loss, _ = _setup()
    t = _targets([(0, 100.0, 90.0, 60.0, 120.0), (1, 40.0, 200.0, 30.0, 50.0)])
    values = []
    for shift in (0.0, 0.1, 0.5, 2.0):
        with torch.no_grad():
            raws = [torch.zeros_like(r) for r in model(torch.zeros(2, 3, 256, 256))]
            _encode_exact(raws, loss, t, shift)
        values.append(loss(raws, t)[1])
    assert values[0]["kpt"].abs() < 1e-6
    assert values[0]["box"].abs() < 1e-4       # boxes were encoded exactly too: CIoU = 1
    kpt = [v["kpt"].item() for v in values]
    assert kpt[0] < kpt[1] < kpt[2] < kpt[3]


def test_l1_keypoint_loss_alternative() -> None:
    model, _, _ = _setup()
    loss = PoseLoss(K, 1, model.anchors, model.strides, default_sigmas(K), kpt_loss="l1")
    t = _targets([(0, 100.0, 90.0, 60.0, 120.0)])
    raws = [torch.zeros_like(r) for r in model(torch.zeros(1, 3, 256, 256))]
    _encode_exact(raws, loss, t, 0.0)
    assert loss(raws, t)[1]["kpt"].abs() < 1e-5
    _encode_exact(raws, loss, t, 1.0)
    assert loss(raws, t)[1]["kpt"].item() == pytest.approx(2.0, abs=1e-4)   # |1| + |1| cells per keypoint
    with pytest.raises(ValueError, match="kpt_loss"):
        PoseLoss(K, 1, model.anchors, model.strides, default_sigmas(K), kpt_loss="l2")


@pytest.mark.parametrize("case", ["no_people", "no_labelled_keypoints"])
def test_loss_finite_without_people_or_keypoints(case: str) -> None:
    model, loss, _ = _setup()
    raws = model(torch.rand(2, 3, 256, 256))
    t = torch.zeros(0, 6 + 3 * K) if case == "no_people" else _targets([(0, 100.0, 90.0, 60.0, 120.0)], v=0.0)
    total, parts = loss(raws, t)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if case == "no_labelled_keypoints":
        assert parts["kpt"] == 0 and parts["box"] > 0 and parts["kpt_conf"] > 0


def test_gradients_reach_both_head_branches() -> None:
    model, loss, _ = _setup()
    t = _targets([(0, 100.0, 90.0, 60.0, 120.0), (1, 40.0, 200.0, 30.0, 50.0)])
    total, _ = loss(model(torch.rand(2, 3, 256, 256)), t)
    total.backward()
    for branch in list(model.head.det) + list(model.head.kpt):
        grads = [p.grad for p in branch.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in (p.grad for b in model.head.kpt for p in b.parameters()))
    assert any(g.abs().sum() > 0 for g in (p.grad for b in model.head.det for p in b.parameters()))


def test_class_loss_only_with_several_classes() -> None:
    torch.manual_seed(0)
    model = YOLOPose("n", num_keypoints=K, num_classes=3)
    loss = PoseLoss(K, 3, model.anchors, model.strides, default_sigmas(K))
    t = _targets([(0, 100.0, 90.0, 60.0, 120.0)])
    t[0, 1] = 2
    assert loss(model(torch.rand(1, 3, 256, 256)), t)[1]["cls"] > 0
    _, loss1, _ = _setup()
    model1 = YOLOPose("n", num_keypoints=K)
    assert loss1(model1(torch.rand(1, 3, 256, 256)), _targets([(0, 100.0, 90.0, 60.0, 120.0)]))[1]["cls"] == 0


def test_crowd_region_removes_objectness_loss_inside_it() -> None:
    model, loss, _ = _setup()
    with torch.no_grad():
        raws = model(torch.zeros(1, 3, 256, 256))
        for r in raws:
            r[..., 4] = 5.0                      # confident everywhere: every negative costs a lot
    empty = torch.zeros(0, 6 + 3 * K)
    full = loss(raws, empty)[1]["obj"]
    half = loss(raws, empty, torch.tensor([[0.0, 0.0, 0.0, 256.0, 128.0]]))[1]["obj"]
    whole = loss(raws, empty, torch.tensor([[0.0, 0.0, 0.0, 256.0, 256.0]]))[1]["obj"]
    assert whole < 1e-6 < half < full
    assert half.item() == pytest.approx(full.item() / 2, rel=0.1)


def test_sigma_count_must_match() -> None:
    model = YOLOPose("n", num_keypoints=K)
    with pytest.raises(ValueError, match="sigmas"):
        PoseLoss(K, 1, model.anchors, model.strides, default_sigmas(4))
