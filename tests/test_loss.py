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
    loss = PoseLoss(num_keypoints=k, num_classes=1, assigner=AnchorAssigner(model.anchors, model.strides),
                    sigmas=default_sigmas(k))
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
    loss = PoseLoss(num_keypoints=K, num_classes=1, assigner=AnchorAssigner(model.anchors, model.strides),
                    sigmas=default_sigmas(K), kpt_loss="l1")
    t = _targets([(0, 100.0, 90.0, 60.0, 120.0)])
    raws = [torch.zeros_like(r) for r in model(torch.zeros(1, 3, 256, 256))]
    _encode_exact(raws, loss, t, 0.0)
    assert loss(raws, t)[1]["kpt"].abs() < 1e-5
    _encode_exact(raws, loss, t, 1.0)
    assert loss(raws, t)[1]["kpt"].item() == pytest.approx(2.0, abs=1e-4)   # |1| + |1| cells per keypoint
    with pytest.raises(ValueError, match="kpt_loss"):
        PoseLoss(num_keypoints=K, num_classes=1, assigner=AnchorAssigner(model.anchors, model.strides),
                 sigmas=default_sigmas(K), kpt_loss="l2")


def test_scaled_l1_helper_keeps_gradient_where_oks_saturates() -> None:
    """kpt_l1 = L1 / sqrt(area): 0 at the target, linear in the error, and its gradient stays when a
    keypoint is so far off that 1 - OKS is flat (the reason the optional term exists)."""
    model, _, _ = _setup()
    t = _targets([(0, 100.0, 90.0, 60.0, 120.0)])
    parts, grads = [], []
    for weight in (0.0, 0.1):
        loss = PoseLoss(num_keypoints=K, num_classes=1, assigner=AnchorAssigner(model.anchors, model.strides),
                        sigmas=default_sigmas(K), kpt_l1_weight=weight)
        for shift in (0.0, 1.0, 2.0, 8.0):
            with torch.no_grad():
                raws = [torch.zeros_like(r) for r in model(torch.zeros(1, 3, 256, 256))]
                _encode_exact(raws, loss, t, shift)
            raws = [r.requires_grad_() for r in raws]
            total, p = loss(raws, t)
            total.backward()
            parts.append(p)
            grads.append(sum(r.grad[..., 6:].unflatten(-1, (K, 3))[..., :2].abs().sum() for r in raws).item())
    l1 = [p["kpt_l1"].item() for p in parts[:4]]
    assert l1[0] < 1e-6
    assert l1[2] == pytest.approx(2 * l1[1], rel=1e-4) and l1[3] == pytest.approx(8 * l1[1], rel=1e-4)
    assert parts[3]["kpt"].item() > 0.999                     # 8 cells off: OKS has given up ...
    assert grads[3] < 1e-3 * grads[1]                         # ... and so has its gradient,
    assert grads[7] > 0.1 * grads[5]                          # but not with the L1 helper on
    assert [p["kpt_l1"].item() for p in parts[4:]] == pytest.approx(l1)


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


def test_loss_and_model_take_their_settings_by_keyword_only() -> None:
    """Two swapped weights in a positional call must be an error, not a silently different loss."""
    model = YOLOPose("n", num_keypoints=K)
    with pytest.raises(TypeError):
        PoseLoss(K, 1, AnchorAssigner(model.anchors, model.strides), default_sigmas(K))  # type: ignore[misc]
    with pytest.raises(TypeError):
        YOLOPose("n", K)  # type: ignore[misc]


def test_class_loss_only_with_several_classes() -> None:
    torch.manual_seed(0)
    model = YOLOPose("n", num_keypoints=K, num_classes=3)
    loss = PoseLoss(num_keypoints=K, num_classes=3, assigner=AnchorAssigner(model.anchors, model.strides),
                    sigmas=default_sigmas(K))
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
        PoseLoss(num_keypoints=K, num_classes=1, assigner=AnchorAssigner(model.anchors, model.strides),
                 sigmas=default_sigmas(4))


# --------------------------------------------------------------------------- vectorised == former loop
def _loop_assign(assigner: AnchorAssigner, targets: torch.Tensor, grid_sizes: list[tuple[int, int]]) -> list[dict]:
    """The per-level assigner this project used before it was vectorised (kept verbatim as the reference)."""
    offsets_table = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)
    anchors = assigner.anchors.to(targets.device, targets.dtype)
    n_levels, n_anchors = anchors.shape[:2]
    k = (targets.shape[1] - 6) // 3
    ratio = targets[None, None, :, 4:6] / anchors[:, :, None, :]
    worst = torch.maximum(ratio, 1 / ratio).amax(-1)
    match = worst < assigner.anchor_t
    flat = worst.reshape(n_levels * n_anchors, -1)
    orphan = ~match.reshape(n_levels * n_anchors, -1).any(0)
    best = torch.nn.functional.one_hot(flat.argmin(0), n_levels * n_anchors).T.bool()
    forced_all = (best & orphan[None]).reshape(n_levels, n_anchors, -1)
    out = []
    for lvl, (h, w) in enumerate(grid_sizes):
        stride, m, forced = float(assigner.strides[lvl]), match[lvl], forced_all[lvl]
        a_idx, t_idx = (m | forced).nonzero(as_tuple=True)
        own_only = forced[a_idx, t_idx] & ~m[a_idx, t_idx]
        t = targets[t_idx]
        gxy = t[:, 2:4] / stride
        gxy_inv = torch.tensor([w, h], dtype=t.dtype) - gxy
        g = assigner.neighbour
        frac, frac_inv = gxy % 1, gxy_inv % 1
        near = torch.stack((torch.ones_like(own_only),
                            (frac[:, 0] < g) & (gxy[:, 0] > 1) & ~own_only,
                            (frac[:, 1] < g) & (gxy[:, 1] > 1) & ~own_only,
                            (frac_inv[:, 0] < g) & (gxy_inv[:, 0] > 1) & ~own_only,
                            (frac_inv[:, 1] < g) & (gxy_inv[:, 1] > 1) & ~own_only))
        o_idx, p_idx = near.nonzero(as_tuple=True)
        gxy_p = gxy[p_idx]
        cell = (gxy_p - offsets_table[o_idx] * g).floor()
        cell[:, 0].clamp_(0, w - 1)
        cell[:, 1].clamp_(0, h - 1)
        tp = t[p_idx]
        kpt = tp[:, 6:].reshape(-1, k, 3)
        out.append({"batch": tp[:, 0].long(), "anchor": a_idx[p_idx], "gy": cell[:, 1].long(),
                    "gx": cell[:, 0].long(), "box": torch.cat((gxy_p - cell, tp[:, 4:6] / stride), 1),
                    "anchor_wh": anchors[lvl][a_idx[p_idx]] / stride, "cls": tp[:, 1].long(),
                    "keypoints": torch.cat((kpt[..., :2] / stride - cell[:, None, :], kpt[..., 2:3]), -1),
                    "target_index": t_idx[p_idx]})
    return out


def _random_targets(n: int, size: int, k: int, seed: int, batch: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    wh = torch.exp(torch.rand(n, 2, generator=g) * 6.5)            # 1 px .. 665 px: includes orphans
    cxy = torch.rand(n, 2, generator=g) * size
    cxy[: n // 8] = cxy[: n // 8].round()                          # centres on cell borders
    t = torch.zeros(n, 6 + 3 * k)
    t[:, 0] = torch.randint(0, batch, (n,), generator=g).float()
    t[:, 1] = torch.randint(0, 3, (n,), generator=g).float()
    t[:, 2:4], t[:, 4:6] = cxy, wh
    t[:, 6::3] = torch.rand(n, k, generator=g) * size
    t[:, 7::3] = torch.rand(n, k, generator=g) * size
    t[:, 8::3] = torch.randint(0, 3, (n, k), generator=g).float()
    return t


@pytest.mark.parametrize("seed,n,size,levels", [(0, 300, 256, 4), (1, 57, 320, 4), (2, 120, 192, 3), (3, 0, 256, 4),
                                                (4, 1, 64, 4)])
def test_vectorised_assigner_equals_former_loop(seed: int, n: int, size: int, levels: int) -> None:
    from yolopose.nn.model import default_anchors

    strides = [8, 16, 32, 64][:levels]
    assigner = AnchorAssigner(torch.tensor(default_anchors(levels)), strides)
    targets = _random_targets(n, size, K, seed)
    grids = [(size // s, size // s + 1) for s in strides]        # non-square grids too
    got, want = assigner(targets, grids), _loop_assign(assigner, targets, grids)
    assert len(got) == len(want) == levels
    for lt, ref in zip(got, want):
        for name, value in ref.items():
            assert torch.equal(getattr(lt, name), value), name   # same positives, same order, same values


# Values produced by the former per-level loss (commit e28213d) on ``_fixed_case``: the vectorised loss
# must give the same numbers (float summation order may differ: relative 1e-6).
_FIXED = {  # (K, C, seed, kpt_loss, ignore) -> (total, box, obj, cls, kpt, kpt_conf, |grad| sum per level)
    (5, 1, 0, "oks", False): (3.293105363845825, 0.9075913429260254, 0.6796932816505432, 0.0, 0.9539495706558228,
                              0.8212892413139343,
                              (1.1131677627563477, 0.3589755892753601, 0.11960688978433609, 0.030857261270284653)),
    (17, 1, 1, "oks", True): (2.944655418395996, 0.8686107993125916, 0.5755335092544556, 0.0, 0.9279702305793762,
                              0.815323531627655,
                              (0.907540500164032, 0.3328542113304138, 0.12883107364177704, 0.029854875057935715)),
    (5, 3, 2, "oks", True): (4.199524879455566, 0.8446729183197021, 0.5723300576210022, 0.8348932266235352,
                             0.9529809951782227, 0.7940660715103149,
                             (1.3186737298965454, 0.5815154314041138, 0.2039823979139328, 0.032106272876262665)),
    (5, 1, 3, "l1", False): (7.535661220550537, 0.8648260235786438, 0.6858504414558411, 0.0, 5.667191028594971,
                             0.787933349609375,
                             (2.940690517425537, 1.488300085067749, 0.5104866623878479, 0.0959913358092308)),
}


def _fixed_case(k: int, c: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Seeded raw maps (no model: independent of conv kernels), 40 targets incl. orphans and border centres."""
    g = torch.Generator().manual_seed(seed)
    size, strides, b = 256, [8, 16, 32, 64], 3
    raws = [torch.randn(b, 3, size // s, size // s, 5 + c + 3 * k, generator=g) for s in strides]
    n = 40
    wh = torch.exp(torch.rand(n, 2, generator=g) * 6.0)
    wh[:3] = torch.tensor([[1.0, 1.0], [2.0, 60.0], [250.0, 3.0]])
    cxy = torch.rand(n, 2, generator=g) * size
    cxy[3:6] = torch.tensor([[0.5, 0.5], [255.7, 1.0], [128.0, 128.0]])
    t = torch.zeros(n, 6 + 3 * k)
    t[:, 0] = torch.arange(n) % b
    t[:, 1] = torch.randint(0, c, (n,), generator=g).float()
    t[:, 2:4], t[:, 4:6] = cxy, wh
    t[:, 6::3] = cxy[:, :1] + (torch.rand(n, k, generator=g) - 0.5) * wh[:, :1]
    t[:, 7::3] = cxy[:, 1:] + (torch.rand(n, k, generator=g) - 0.5) * wh[:, 1:]
    t[:, 8::3] = torch.randint(0, 3, (n, k), generator=g).float()
    ignore = torch.tensor([[0.0, 10.0, 20.0, 120.0, 90.0], [2.0, 100.0, 100.0, 250.0, 250.0]])
    return raws, t, ignore


@pytest.mark.parametrize("case", list(_FIXED))
def test_loss_values_and_gradients_unchanged(case: tuple) -> None:
    from yolopose.nn.model import default_anchors

    k, c, seed, kpt_loss, use_ignore = case
    raws, targets, ignore = _fixed_case(k, c, seed)
    raws = [r.requires_grad_() for r in raws]
    assigner = AnchorAssigner(torch.tensor(default_anchors(4)), [8, 16, 32, 64])
    loss = PoseLoss(num_keypoints=k, num_classes=c, assigner=assigner, sigmas=default_sigmas(k), kpt_loss=kpt_loss)
    total, parts = loss(raws, targets, ignore if use_ignore else None)
    total.backward()
    *values, grads = _FIXED[case]
    got = [total.item()] + [parts[n].item() for n in ("box", "obj", "cls", "kpt", "kpt_conf")]
    assert got == pytest.approx(values, rel=1e-6, abs=1e-7)
    assert [r.grad.abs().sum().item() for r in raws] == pytest.approx(list(grads), rel=1e-6)


def test_loss_under_bf16_autocast_is_float32_and_close() -> None:
    """With bf16 raw maps (autocast) the loss is still computed in float32: close to the fp32 value."""
    from yolopose.nn.model import default_anchors

    raws, targets, ignore = _fixed_case(5, 1, 0)
    assigner = AnchorAssigner(torch.tensor(default_anchors(4)), [8, 16, 32, 64])
    loss = PoseLoss(num_keypoints=5, num_classes=1, assigner=assigner, sigmas=default_sigmas(5))
    ref_total, _ = loss(raws, targets, ignore)
    low = [r.to(torch.bfloat16).requires_grad_() for r in raws]
    total, parts = loss(low, targets, ignore)
    total.backward()
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in parts.values())
    assert total.item() == pytest.approx(ref_total.item(), rel=2e-2)
    assert all(r.grad is not None and r.grad.dtype == torch.bfloat16 and torch.isfinite(r.grad).all() for r in low)
