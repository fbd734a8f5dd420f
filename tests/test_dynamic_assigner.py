"""The dynamic assigner: the cost picks the anchor that predicts the person best, every person keeps a positive,
no anchor serves two people, the result is reproducible, and it trains through the loss."""
from __future__ import annotations

import pytest
import torch

from yolopose.assigner import AnchorAssigner
from yolopose.dynamic_assigner import DynamicAssigner, lowest_per_key, rank_within_groups
from yolopose.geometry import default_sigmas
from yolopose.loss import PoseLoss
from yolopose.nn.model import default_anchors

from test_loss import _targets

K = 5
STRIDES = [8, 16, 32, 64]
SIZE = 256


def _assigners(**kwargs: object) -> tuple[AnchorAssigner, DynamicAssigner]:
    anchors = torch.tensor(default_anchors(4))
    return (AnchorAssigner(anchors, STRIDES),
            DynamicAssigner(anchors, STRIDES, sigmas=default_sigmas(K), num_classes=1, **kwargs))


def _grids() -> list[tuple[int, int]]:
    return [(SIZE // s, SIZE // s) for s in STRIDES]


def _raws(seed: int = 0, batch: int = 2, c: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, h, w, 5 + c + 3 * K, generator=g) for h, w in _grids()]


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p / (1 - p))


def test_helpers_rank_within_groups_and_keep_the_cheapest_per_key() -> None:
    group = torch.tensor([1, 0, 1, 1, 0])
    value = torch.tensor([0.5, 0.2, 0.1, 0.5, 0.9])
    assert rank_within_groups(group, value, 2).tolist() == [1, 0, 0, 2, 1]   # ties: the lower index first
    active = torch.tensor([True, True, True, True, False])
    assert lowest_per_key(group, value, active, 3).tolist() == [False, True, True, False, False]


def test_the_cost_picks_the_anchor_whose_prediction_fits_the_person() -> None:
    """One person; every candidate predicts a near-empty box except one chosen anchor (not the static rule's
    favourite: a neighbour cell on P4), which predicts the person's box, keypoints and objectness exactly."""
    static, dynamic = _assigners()
    targets = _targets([(0, 100.0, 90.0, 60.0, 100.0)])
    raws = [torch.zeros(1, 3, h, w, 5 + 1 + 3 * K) for h, w in _grids()]
    for r in raws:
        r[..., 2:4] = -12.0     # boxes of ~0 size: IoU ~ 0 with the person
        r[..., 4] = -8.0
    cand = dynamic.candidates(targets, _grids(), diagonal=True)
    chosen = int(((cand.level == 1) & (cand.gx != 100 // 16) & (cand.gy != 90 // 16)).nonzero()[0])  # a diagonal
    lvl, a, gy, gx = (int(getattr(cand, f)[chosen]) for f in ("level", "anchor", "gy", "gx"))
    raws[lvl][0, a, gy, gx, :2] = _logit((cand.box[chosen, :2] + 0.5) / 2)
    raws[lvl][0, a, gy, gx, 2:4] = _logit((cand.box[chosen, 2:4] / cand.anchor_wh[chosen]).sqrt() / 2)
    raws[lvl][0, a, gy, gx, 4] = 4.0
    raws[lvl][0, a, gy, gx, 6:] = torch.cat(((cand.keypoints[chosen, :, :2] + 0.5) / 2,
                                            torch.zeros(K, 1)), -1).flatten()
    pos = dynamic.assign(targets, _grids(), raws)
    assert [int(pos.level[0]), int(pos.anchor[0]), int(pos.gy[0]), int(pos.gx[0])] == [lvl, a, gy, gx]
    assert pos.batch.numel() == 1                     # k = floor(1.0 + ~0) = 1
    static_cells = {(int(lv), int(y), int(x)) for lv, y, x in
                    zip(*(getattr(static.assign(targets, _grids()), f) for f in ("level", "gy", "gx")))}
    assert (lvl, gy, gx) not in static_cells          # a cell the static rule never uses


def _crowd(n: int, seed: int) -> torch.Tensor:
    """``n`` people in 2 images, many overlapping (centres in a small area), sizes 8..300 px."""
    g = torch.Generator().manual_seed(seed)
    wh = torch.exp(torch.rand(n, 2, generator=g) * 3.6 + 2.1)
    cxy = 100 + torch.rand(n, 2, generator=g) * 60
    return _targets([(i % 2, *cxy[i].tolist(), *wh[i].tolist()) for i in range(n)], seed=seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_person_keeps_a_positive_and_no_anchor_serves_two(seed: int) -> None:
    _, dynamic = _assigners()
    targets = _crowd(60, seed)
    pos = dynamic.assign(targets, _grids(), _raws(seed))
    assert pos.target_index.unique().tolist() == list(range(len(targets)))
    key = ((pos.level * 2 + pos.batch) * 3 + pos.anchor) * 10_000 + pos.gy * 100 + pos.gx
    assert key.unique().numel() == key.numel()
    assert torch.equal(pos.level, pos.level.sort().values)          # level order, as the loss expects
    assert (pos.batch == targets[pos.target_index, 0].long()).all()


def test_positives_are_candidates_of_the_static_shape_test() -> None:
    """Every dynamic positive is an anchor that passes the ratio test (or, for a person no anchor fits, its
    best-ratio anchor) in a cell whose centre range reaches the person's centre (-0.5..1.5 cells)."""
    _, dynamic = _assigners()
    targets = _crowd(40, 3)
    pos = dynamic.assign(targets, _grids(), _raws(3))
    assert ((pos.box[:, :2] > -0.5) & (pos.box[:, :2] < 1.5)).all()
    ratio = pos.box[:, 2:] / pos.anchor_wh
    fits = torch.maximum(ratio, 1 / ratio).amax(1) < 4.0
    anchors = torch.tensor(default_anchors(4)).reshape(-1, 2)
    wh = targets[pos.target_index, 4:6]
    orphan = (torch.maximum(wh[:, None] / anchors, anchors / wh[:, None]).amax(-1) >= 4.0).all(1)
    assert orphan.any() and (fits | orphan).all()


def test_fixed_seed_gives_identical_assignments() -> None:
    _, dynamic = _assigners()
    targets = _crowd(50, 4)
    first, second = dynamic.assign(targets, _grids(), _raws(4)), dynamic.assign(targets, _grids(), _raws(4))
    for name in ("batch", "anchor", "gy", "gx", "level", "target_index"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name


def test_better_predicted_people_get_more_positives() -> None:
    """Dynamic k: with every candidate predicting the person exactly, k = floor(sum of the 10 best IoUs) = 9
    (each IoU is 1 - 1e-7), against the single positive of a person the network misses (IoUs ~ 0)."""
    _, dynamic = _assigners(topq=10)
    targets = _targets([(0, 100.0, 100.0, 80.0, 120.0)])
    cand = dynamic.candidates(targets, _grids(), diagonal=True)
    raws = [torch.zeros(1, 3, h, w, 5 + 1 + 3 * K) for h, w in _grids()]
    for i in range(cand.batch.numel()):
        lvl, a, gy, gx = (int(getattr(cand, f)[i]) for f in ("level", "anchor", "gy", "gx"))
        raws[lvl][0, a, gy, gx, :2] = _logit((cand.box[i, :2] + 0.5) / 2)
        raws[lvl][0, a, gy, gx, 2:4] = _logit((cand.box[i, 2:4] / cand.anchor_wh[i]).sqrt() / 2)
    assert cand.batch.numel() > 10
    assert dynamic.assign(targets, _grids(), raws).batch.numel() == 9
    for r in raws:
        r[..., 2:4] = -12.0
    assert dynamic.assign(targets, _grids(), raws).batch.numel() == 1


def test_needs_predictions_and_handles_no_people() -> None:
    _, dynamic = _assigners()
    with pytest.raises(ValueError, match="predictions"):
        dynamic.assign(_crowd(3, 0), _grids())
    assert dynamic.assign(torch.zeros(0, 6 + 3 * K), _grids(), _raws()).batch.numel() == 0


def test_loss_trains_with_the_dynamic_assigner() -> None:
    """Finite loss, gradients on every level that holds a positive, none from the assignment itself."""
    _, dynamic = _assigners()
    raws = [r.requires_grad_() for r in _raws(5)]
    loss = PoseLoss(num_keypoints=K, num_classes=1, assigner=dynamic, sigmas=default_sigmas(K))
    total, parts = loss(raws, _crowd(20, 5))
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in raws)
