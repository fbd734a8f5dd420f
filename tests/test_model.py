"""Model shapes, variants and configuration errors."""
import pytest
import torch

from yolopose import VARIANTS, YOLOPose
from yolopose.nn.complexity import count_macs, count_parameters


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("k", [17, 5, 21])
def test_output_shapes_per_variant_and_level(variant: str, k: int) -> None:
    if variant in "lx" and k != 17:
        pytest.skip("large variants checked once (build time)")
    model = YOLOPose(variant, num_keypoints=k).eval()
    with torch.no_grad():
        outs = model(torch.rand(2, 3, 128, 192))
    assert model.strides == [8, 16, 32, 64]
    assert len(outs) == 4
    for out, stride in zip(outs, model.strides):
        assert out.shape == (2, 3, 128 // stride, 192 // stride, 5 + 1 + 3 * k)


def test_three_level_configuration_and_classes() -> None:
    model = YOLOPose("n", num_keypoints=5, num_classes=3, num_levels=3).eval()
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 96, 64))
    assert model.strides == [8, 16, 32]
    assert [tuple(o.shape) for o in outs] == [(1, 3, 12, 8, 23), (1, 3, 6, 4, 23), (1, 3, 3, 2, 23)]


def test_backbone_publishes_channels_and_strides() -> None:
    model = YOLOPose("s")
    feats = model.backbone(torch.rand(1, 3, 128, 128))
    assert [f.shape[1] for f in feats] == model.backbone.out_channels
    assert [128 // f.shape[2] for f in feats] == model.backbone.strides


def test_keypoint_head_depth_is_an_argument() -> None:
    deep, flat = YOLOPose("n", kpt_head_depth=6), YOLOPose("n", kpt_head_depth=0)
    assert count_parameters(deep) > count_parameters(flat)
    assert len(flat.head.kpt[0]) == 1  # a single 1x1 conv


def test_relu_variant_has_no_silu() -> None:
    model = YOLOPose("n", act="relu")
    assert not any(isinstance(m, torch.nn.SiLU) for m in model.modules())


def test_s_variant_macs_near_paper_figure() -> None:
    # The paper reports 10.2 GMACs for its s6 pose model at 640x640; ours must be within 15 %.
    macs = count_macs(YOLOPose("s"), 640) / 1e9
    assert abs(macs - 10.2) / 10.2 < 0.15, macs


@pytest.mark.parametrize("kwargs, match", [
    ({"variant": "q"}, "unknown variant"),
    ({"num_keypoints": 0}, "num_keypoints"),
    ({"anchors": [[[10, 10]]]}, "anchors must be"),
    ({"act": "gelu"}, "unknown activation"),
])
def test_bad_configuration_is_a_clear_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        YOLOPose(**kwargs)


def test_objectness_prior_in_bias() -> None:
    model = YOLOPose("n")
    bias = model.head.det[0].bias.view(3, -1)[:, 4]
    # ~8 objects per 640x640 image spread over the stride-8 cells.
    assert torch.allclose(bias.sigmoid(), torch.full((3,), 8 / 80**2), rtol=1e-3)


def test_keypoint_prior_starts_keypoints_at_the_mean_pose_scaled_to_each_anchor() -> None:
    from yolopose.geometry import decode

    k = 3
    prior = [[0.0, -0.4], [0.25, 0.1], [-0.25, 0.5]]  # box widths/heights from the box centre
    model = YOLOPose("n", num_keypoints=k, keypoint_prior=prior).eval()
    for branch in model.head.kpt:  # keep only the biases: every cell then predicts the initial pose
        torch.nn.init.zeros_(branch[-1].weight)
    with torch.no_grad():
        raws = model(torch.rand(1, 3, 128, 128))
        det = decode(raws, model.anchors, model.strides, 1)
    first = 0
    for raw, stride, anchors in zip(raws, model.strides, model.anchors):
        _, a, h, w, _ = raw.shape
        cells = det[0, first:first + a * h * w].reshape(a, h, w, -1)
        first += a * h * w
        for ai in range(a):
            centre = torch.tensor([0.5 * stride, 0.5 * stride])  # cell (0, 0)
            want = centre + torch.tensor(prior) * anchors[ai]
            got = cells[ai, 0, 0, 6:].reshape(k, 3)[:, :2]
            assert torch.allclose(got, want, atol=1e-3), (stride, ai)
    with pytest.raises(ValueError, match="keypoint_prior"):
        YOLOPose("n", num_keypoints=k, keypoint_prior=[[0.0, 0.0]])
