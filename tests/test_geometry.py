"""CIoU, OKS and decode invariants."""
import torch

from yolopose.geometry import (ciou, cxcywh_to_xyxy, decode, decode_level, default_sigma_list, default_sigmas,
                               keypoint_similarity, xyxy_to_cxcywh, COCO_PERSON_SIGMAS, UNIFORM_SIGMA)


def test_ciou_of_identical_boxes_is_one() -> None:
    a = torch.tensor([[10.0, 20.0, 5.0, 8.0], [0.5, 0.5, 1.0, 3.0]])
    assert torch.allclose(ciou(a, a), torch.ones(2), atol=1e-5)


def test_ciou_ranks_overlap_and_is_bounded() -> None:
    t = torch.tensor([[0.0, 0.0, 2.0, 2.0]]).repeat(3, 1)
    p = torch.tensor([[0.1, 0.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0], [10.0, 10.0, 2.0, 2.0]])
    v = ciou(p, t)
    assert v[0] > v[1] > v[2]
    assert (v >= -1.5).all() and (v <= 1).all()


def test_ciou_gradients_finite_for_degenerate_boxes() -> None:
    p = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 5.0], [3.0, 3.0, 1e-8, 1e-8], [0.0, 0.0, 2.0, 2.0]],
                     requires_grad=True)
    t = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 3.0, 0.0], [3.0, 3.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    v = ciou(p, t)
    (1 - v).sum().backward()
    assert torch.isfinite(v).all() and torch.isfinite(p.grad).all()


def test_oks_is_one_at_target_and_decreases_with_distance() -> None:
    sig = default_sigmas(17)
    tgt = torch.rand(1, 17, 2) * 10
    area = torch.tensor([50.0])
    sims = [keypoint_similarity(tgt + d, tgt, area, sig) for d in (0.0, 0.5, 1.0, 3.0)]
    assert torch.allclose(sims[0], torch.ones(1, 17))
    for near, far in zip(sims, sims[1:]):
        assert (far < near).all()


def test_oks_matches_coco_formula() -> None:
    # COCO: exp(-d^2 / (2 * s^2 * k^2)) with k = 2 sigma and s^2 the object area.
    sig = torch.tensor([0.1])
    d, area = 3.0, 100.0
    got = keypoint_similarity(torch.tensor([[[d, 0.0]]]), torch.zeros(1, 1, 2), torch.tensor([area]), sig)
    expected = torch.exp(torch.tensor(-(d**2) / (2 * area * (2 * 0.1) ** 2)))
    assert torch.allclose(got, expected.view(1, 1))


def test_default_sigmas() -> None:
    assert torch.allclose(default_sigmas(17), torch.tensor(COCO_PERSON_SIGMAS))
    s = default_sigmas(5)
    assert s.shape == (5,) and torch.all(s == s[0])


def test_default_sigmas_are_cocos_only_for_a_17_keypoint_person() -> None:
    coco = torch.tensor(COCO_PERSON_SIGMAS)
    assert torch.allclose(default_sigmas(17, " Person "), coco)
    for k, name in ((17, "dog"), (17, "hand"), (5, "person")):
        s = default_sigmas(k, name)
        assert s.shape == (k,) and torch.allclose(s, torch.full((k,), UNIFORM_SIGMA))
    assert default_sigma_list(17, "person") == list(COCO_PERSON_SIGMAS)  # exact floats for hparams/metadata


def test_box_format_roundtrip() -> None:
    b = torch.tensor([[1.0, 2.0, 5.0, 9.0]])
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(b)), b)


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p / (1 - p))


def test_decode_inverts_hand_built_encoding() -> None:
    """Encode a known box and keypoints at one cell by hand; decode must return them."""
    k, stride, c = 3, 16.0, 1
    anchors = torch.tensor([[20.0, 40.0], [50.0, 50.0], [80.0, 30.0]])
    raw = torch.zeros(1, 3, 4, 5, 5 + c + 3 * k)
    a, gy, gx = 1, 2, 3
    cx, cy, w, h = (gx + 0.8) * stride, (gy + 0.2) * stride, 70.0, 35.0
    kpts = torch.tensor([[cx + 100.0, cy - 7.0, 0.9], [cx, cy, 0.2], [cx - 60.0, cy + 3.0, 0.5]])
    raw[0, a, gy, gx, 0] = _logit(torch.tensor((0.8 + 0.5) / 2))
    raw[0, a, gy, gx, 1] = _logit(torch.tensor((0.2 + 0.5) / 2))
    raw[0, a, gy, gx, 2] = _logit(torch.sqrt(torch.tensor(w / 50.0)) / 2)
    raw[0, a, gy, gx, 3] = _logit(torch.sqrt(torch.tensor(h / 50.0)) / 2)
    raw[0, a, gy, gx, 4] = _logit(torch.tensor(0.7))
    raw[0, a, gy, gx, 5] = _logit(torch.tensor(0.6))
    for j, (x, y, conf) in enumerate(kpts.tolist()):
        raw[0, a, gy, gx, 6 + 3 * j] = (x / stride - gx + 0.5) / 2
        raw[0, a, gy, gx, 7 + 3 * j] = (y / stride - gy + 0.5) / 2
        raw[0, a, gy, gx, 8 + 3 * j] = _logit(torch.tensor(conf))
    out = decode_level(raw, anchors, stride, c)
    assert out.shape == (1, 3 * 4 * 5, 5 + c + 3 * k)
    row = out[0, (a * 4 + gy) * 5 + gx]
    assert torch.allclose(row[:4], torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), atol=1e-3)
    assert torch.allclose(row[4:6], torch.tensor([0.7, 0.6]), atol=1e-5)
    assert torch.allclose(row[6:].view(k, 3), kpts, atol=1e-3)


def test_decode_concatenates_levels_in_order() -> None:
    raws = [torch.randn(2, 3, 8, 8, 5 + 1 + 6), torch.randn(2, 3, 4, 4, 5 + 1 + 6)]
    anchors = torch.rand(2, 3, 2) * 50 + 5
    out = decode(raws, anchors, [8, 16], 1)
    assert out.shape == (2, 3 * 64 + 3 * 16, 12)
    assert torch.equal(out[:, 3 * 64:], decode_level(raws[1], anchors[1], 16, 1))
