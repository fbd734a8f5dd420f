"""The keypoint likelihood term (``kpt_nll_weight``): a Laplace NLL with a predicted scale per keypoint, beside OKS;
its scale maps are a training-only output, so the model's forward (and every export) is unchanged."""
from __future__ import annotations

import math

import pytest
import torch

from yolopose import YOLOPose
from yolopose.assigner import AnchorAssigner, gather_positive_rows
from yolopose.geometry import decode_keypoint_xy, default_sigmas
from yolopose.loss import PoseLoss
from yolopose.nn.model import default_anchors

K = 5


def _case(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    grids = [(32, 32), (16, 16), (8, 8), (4, 4)]
    raws = [torch.randn(2, 3, h, w, 6 + 3 * K, generator=g) * 0.5 for h, w in grids]
    scales = [torch.zeros(2, 3, h, w, K) for h, w in grids]
    t = torch.zeros(6, 6 + 3 * K)
    t[:, 0] = torch.tensor([0, 0, 0, 1, 1, 1.0])
    t[:, 2:4] = torch.rand(6, 2, generator=g) * 200 + 28
    t[:, 4:6] = torch.rand(6, 2, generator=g) * 100 + 30
    t[:, 6::3] = t[:, 2:3] + (torch.rand(6, K, generator=g) - 0.5) * t[:, 4:5]
    t[:, 7::3] = t[:, 3:4] + (torch.rand(6, K, generator=g) - 0.5) * t[:, 5:6]
    t[:, 8::3] = 2.0
    return raws, scales, t


def _loss(weight: float = 1.0) -> PoseLoss:
    return PoseLoss(num_keypoints=K, num_classes=1, sigmas=default_sigmas(K), kpt_nll_weight=weight,
                    assigner=AnchorAssigner(torch.tensor(default_anchors(4)), [8, 16, 32, 64]))


def test_nll_is_zero_without_scales_and_trains_the_scale_maps() -> None:
    raws, scales, targets = _case()
    loss = _loss()
    _, parts = loss(raws, targets)
    assert parts["kpt_nll"] == 0
    scales = [s.requires_grad_() for s in scales]
    total, parts = loss(raws, targets, scales=scales)
    total.backward()
    assert parts["kpt_nll"] > 0 and all(torch.isfinite(v) for v in parts.values())
    assert sum(float(s.grad.abs().sum()) for s in scales) > 0


def test_the_scale_that_minimises_the_nll_is_half_the_normalised_residual() -> None:
    """``2 log b + r / b`` is smallest at ``b = r / 2``: with every positive's scale set there, the scales get no
    gradient, and the NLL equals ``2 log(r / 2) + 2`` averaged."""
    raws, scales, targets = _case(1)
    loss = _loss()
    grids = [(r.shape[2], r.shape[3]) for r in raws]
    pos = loss.assigner.assign(targets, grids)
    pred = gather_positive_rows(raws, pos)
    pxy = decode_keypoint_xy(pred[:, 6:].reshape(-1, K, 3)[..., :2])
    unit = (pos.box[:, 2] * pos.box[:, 3]).sqrt()[:, None] * 2 * default_sigmas(K)[None]
    r = (pxy - pos.keypoints[..., :2]).abs().sum(-1) / unit
    # Several targets may share a cell/anchor: give each cell the optimum of the positive written last, and only
    # check the positives whose cell no other positive uses.
    key = ((pos.level * 2 + pos.batch) * 3 + pos.anchor) * 10_000 + pos.gy * 100 + pos.gx
    unique = torch.tensor([int((key == k).sum()) == 1 for k in key])
    assert unique.sum() > 5
    for i in unique.nonzero().flatten().tolist():
        scales[int(pos.level[i])][pos.batch[i], pos.anchor[i], pos.gy[i], pos.gx[i]] = (r[i] / 2).log()
    scales = [s.requires_grad_() for s in scales]
    total, parts = loss(raws, targets, scales=scales)
    grad = torch.autograd.grad(total, scales)
    for i in unique.nonzero().flatten().tolist():
        g = grad[int(pos.level[i])][pos.batch[i], pos.anchor[i], pos.gy[i], pos.gx[i]]
        assert g.abs().max() < 1e-4
    assert math.isfinite(float(parts["kpt_nll"]))


def test_a_model_with_keypoint_scales_forwards_and_exports_what_one_without_does() -> None:
    torch.manual_seed(0)
    plain = YOLOPose("n", num_keypoints=K, width=0.125, kpt_head_depth=1).eval()
    torch.manual_seed(0)
    model = YOLOPose("n", num_keypoints=K, width=0.125, kpt_head_depth=1, kpt_uncertainty=True).eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        raws, want = model(x), plain(x)
        with_scales, scales = model.forward_with_scales(x)
    assert [r.shape for r in raws] == [r.shape for r in want]
    assert all(torch.equal(a, b) for a, b in zip(raws, with_scales))
    assert all(torch.equal(a, b) for a, b in zip(raws, want))   # the extra conv changes nothing else
    assert [s.shape for s in scales] == [r.shape[:4] + (K,) for r in raws]
    assert set(model.state_dict()) - set(plain.state_dict()) == {f"head.kpt_scale.{i}.{p}" for i in range(4)
                                                                  for p in ("weight", "bias")}
    with pytest.raises(ValueError, match="kpt_uncertainty"):
        plain.head.forward_with_scales([torch.zeros(1, c, 4, 4) for c in plain.neck.out_channels])


def test_the_training_step_feeds_the_scales_to_the_loss() -> None:
    from yolopose.module import PoseModule

    module = PoseModule(num_keypoints=K, variant="n", width=0.125, kpt_head_depth=0, kpt_nll_weight=0.2,
                        channels_last=False)
    raws, scales = module.model.forward_with_scales(torch.rand(2, 3, 256, 256))
    total, parts = module.criterion(raws, _case()[2], scales=scales)
    total.backward()
    assert parts["kpt_nll"] != 0
    assert all(p.grad is not None for p in module.model.head.kpt_scale.parameters())
