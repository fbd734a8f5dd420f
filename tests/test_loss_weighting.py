"""The COCO configs weigh the loss terms as the reference does (TI edgeai-yolov5 yolo-pose, the paper's code).

The reference's loss is written out below from its equations (``utils/loss.py`` ``ComputeLoss`` and the gain
scaling in ``train.py``): per level, the mean of each term over that level's positives, summed over the levels,
times gains that ``train.py`` rescales by the number of levels ``nl``, the class count and the input size:

    box       0.05 * 3/nl           * sum_l mean_P_l (1 - CIoU)
    obj       1.0 * (S/640)^2 * 3/nl * sum_l balance_l * mean_{B A H W} BCE(obj, IoU)
    kpt       0.1                    * sum_l [sum over labelled (1 - exp(-d^2 / (4 sigma^2 A_box + 1e-9)))] / #labelled
    kpt conf  0.5 * C/80 * 3/nl      * sum_l mean_{P_l K} BCE(conf, labelled)      (it reuses the class gain)
    total     * batch size

with d and A_box in grid units. ``PoseLoss`` pools each term over all levels' positives instead, and its OKS
term is COCO's ``exp(-d^2 / (2 A (2 sigma)^2))``, i.e. 8 sigma^2 A. The test compares the gradient norm of
each term with respect to the raw maps, ours (with a config's weights) over the reference's, on the same maps,
positives and objectness targets (what is compared is the weighting, not the assignment), at initialisation
and near convergence. ``python tests/test_loss_weighting.py`` prints the table of ``docs/scaling.md``.
"""
from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from yolopose.assigner import AnchorAssigner, Positives
from yolopose.configs import BASE_OF, CONFIG_DIR, config_files
from yolopose.geometry import COCO_PERSON_SIGMAS, ciou
from yolopose.loss import BALANCE, PoseLoss
from yolopose.module import PoseModule
from yolopose.nn.model import YOLOPose, default_anchors

ROOT = Path(__file__).resolve().parent.parent
COCO_CONFIGS = sorted(CONFIG_DIR / f"{name}.yaml" for name, base in BASE_OF.items() if base == "coco_base")
TERMS = ("box", "obj", "kpt", "kpt_conf")
WEIGHT = {"box": "box_weight", "obj": "obj_weight", "kpt": "kpt_weight", "kpt_conf": "kpt_conf_weight"}
K = 17
TOLERANCE = 0.15

# A standing person in box units (x, y from the box centre, in box widths / heights), COCO's keypoint order.
TEMPLATE = torch.tensor([
    [0.0, -0.42], [0.04, -0.45], [-0.04, -0.45], [0.08, -0.43], [-0.08, -0.43], [0.2, -0.28], [-0.2, -0.28],
    [0.28, -0.1], [-0.28, -0.1], [0.3, 0.05], [-0.3, 0.05], [0.12, 0.05], [-0.12, 0.05], [0.12, 0.25],
    [-0.12, 0.25], [0.12, 0.45], [-0.12, 0.45]])


def reference_loss(raws: list[torch.Tensor], pos: Positives, image_size: int, num_classes: int = 1,
                   balance: tuple[float, ...] = (4.0, 1.0, 0.25, 0.06)) -> dict[str, torch.Tensor]:
    """The reference's four weighted terms (times the batch size), each a scalar with grad w.r.t. ``raws``."""
    nl, bs = len(raws), raws[0].shape[0]
    gain = {"box": 0.05 * 3 / nl, "obj": 1.0 * (image_size / 640) ** 2 * 3 / nl, "kpt": 0.1,
            "kpt_conf": 0.5 * num_classes / 80 * 3 / nl}
    sigmas = torch.tensor(COCO_PERSON_SIGMAS)
    c = 5 + num_classes                                     # first keypoint column of a raw row
    terms = dict.fromkeys(TERMS, torch.zeros(()))
    for lvl, raw in enumerate(raws):
        tobj = torch.zeros(raw.shape[:4])
        mine = pos.level == lvl
        if mine.any():
            b, a, gy, gx = pos.batch[mine], pos.anchor[mine], pos.gy[mine], pos.gx[mine]
            ps = raw[b, a, gy, gx]
            pxy = ps[:, :2].sigmoid() * 2 - 0.5
            pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * pos.anchor_wh[mine]
            tbox = pos.box[mine]
            iou = ciou(torch.cat((pxy, pwh), 1), tbox)
            terms["box"] = terms["box"] + (1 - iou).mean()
            tk = pos.keypoints[mine]
            mask = (tk[..., 2] > 0).float()                # the reference: x != 0 (the same for COCO labels)
            kx, ky, kconf = ps[:, c::3] * 2 - 0.5, ps[:, c + 1::3] * 2 - 0.5, ps[:, c + 2::3]
            terms["kpt_conf"] = terms["kpt_conf"] + F.binary_cross_entropy_with_logits(kconf, mask)
            d = (kx - tk[..., 0]) ** 2 + (ky - tk[..., 1]) ** 2
            s = tbox[:, 2:4].prod(1, keepdim=True)
            factor = mask.numel() / mask.sum()
            terms["kpt"] = terms["kpt"] + factor * ((1 - torch.exp(-d / (s * 4 * sigmas**2 + 1e-9))) * mask).mean()
            cell = ((b * raw.shape[1] + a) * raw.shape[2] + gy) * raw.shape[3] + gx
            tobj.view(-1).scatter_reduce_(0, cell, iou.detach().clamp(min=0), "amax")   # as ours: best IoU wins
        terms["obj"] = terms["obj"] + balance[lvl] * F.binary_cross_entropy_with_logits(raw[..., 4], tobj)
    return {name: gain[name] * value * bs for name, value in terms.items()}


def coco_people(batch: int, size: int, seed: int) -> torch.Tensor:
    """``(T, 6 + 3K)`` targets: 8 people per image, heights log-uniform over 24-480 px at 640 (every level gets
    positives), the template pose with jitter, a quarter of the keypoints unlabelled."""
    g = torch.Generator().manual_seed(seed)
    n = 8 * batch
    h = torch.exp(torch.empty(n).uniform_(float(torch.log(torch.tensor(24.0))), float(torch.log(torch.tensor(480.0))),
                                         generator=g)) * size / 640
    w = h * torch.empty(n).uniform_(0.35, 0.6, generator=g)
    cx = w / 2 + torch.rand(n, generator=g) * (size - w)
    cy = h / 2 + torch.rand(n, generator=g) * (size - h)
    xy = TEMPLATE[None] + torch.randn(n, K, 2, generator=g) * 0.03
    kx, ky = cx[:, None] + xy[..., 0] * w[:, None], cy[:, None] + xy[..., 1] * h[:, None]
    v = (torch.rand(n, K, generator=g) < 0.75).float() * 2
    t = torch.zeros(n, 6 + 3 * K)
    t[:, 0] = torch.arange(n) % batch
    t[:, 2], t[:, 3], t[:, 4], t[:, 5] = cx, cy, w, h
    t[:, 6::3], t[:, 7::3], t[:, 8::3] = kx * (v > 0), ky * (v > 0), v
    return t


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


@functools.cache
def maps(size: int, state: str) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Raw maps of an initialised small model on two noise images (``init``), or those maps with every positive
    placed near its target (``converged``: CIoU ~0.9, OKS ~0.8, confident objectness and keypoint confidences)."""
    torch.manual_seed(0)
    model = YOLOPose("n", num_keypoints=K, width=0.125, kpt_head_depth=0, keypoint_prior=TEMPLATE.tolist()).train()
    with torch.no_grad():
        raws = [r.detach() for r in model(torch.rand(2, 3, size, size))]
    targets = coco_people(2, size, seed=1)
    if state == "converged":
        g = torch.Generator().manual_seed(2)
        pos = AnchorAssigner(model.anchors, model.strides).assign(targets, [r.shape[2:4] for r in raws])
        for raw in raws:
            raw[..., 4] = -7.0 + torch.randn(raw.shape[:4], generator=g)
            raw[..., 6 + 2::3] = -3.0
        for lvl, raw in enumerate(raws):
            m = pos.level == lvl
            idx = (pos.batch[m], pos.anchor[m], pos.gy[m], pos.gx[m])
            box = pos.box[m]
            jitter = 1 + 0.1 * torch.randn(box.shape[0], 4, generator=g)
            raw[idx + (slice(0, 2),)] = _logit((box[:, :2] + 0.05 * box[:, 2:4] * torch.randn(box.shape[0], 2,
                                                                                              generator=g) + 0.5) / 2)
            raw[idx + (slice(2, 4),)] = _logit((box[:, 2:4] * jitter[:, 2:] / pos.anchor_wh[m]).sqrt() / 2)
            raw[idx + (4,)] = _logit(torch.full((box.shape[0],), 0.85))
            kp = pos.keypoints[m]
            spread = torch.tensor(COCO_PERSON_SIGMAS) * 2 * box[:, 2:4].prod(1, keepdim=True).sqrt() * 0.5
            noisy = kp[..., :2] + torch.randn(kp.shape[0], K, 2, generator=g) * spread[..., None]
            conf = torch.where(kp[..., 2] > 0, 3.0, -3.0)
            raw[idx + (slice(6, None),)] = torch.cat(((noisy + 0.5) / 2, conf[..., None]), -1).flatten(1)
    return tuple(raws), targets


def section(path: Path, name: str) -> dict:
    """Section ``name`` of the shipped config ``path`` merged over its bases, as ``--config`` merges them."""
    merged: dict = {}
    for file in config_files(str(path)):
        merged.update(yaml.safe_load(file.read_text()).get(name) or {})
    return merged


def config_loss(path: Path) -> dict[str, float | str]:
    """The config's loss settings (``PoseLoss`` names), ``PoseModule``'s defaults where it sets none."""
    defaults = {n: p.default for n, p in inspect.signature(PoseModule.__init__).parameters.items()}
    model = {**defaults, **section(path, "model")}
    return {**{WEIGHT[t]: float(model[WEIGHT[t]]) for t in TERMS}, "reduction": model["loss_reduction"],
            "kpt_normaliser": model["kpt_normaliser"]}


def gradient_ratios(settings: dict[str, float | str], size: int, state: str) -> dict[str, float]:
    """``|grad ours| / |grad reference|`` per term, w.r.t. the raw maps (``settings``: see ``config_loss``)."""
    return dict(_ratios(tuple(sorted(settings.items())), size, state))


@functools.cache   # the six configs share their loss settings: each size/state once
def _ratios(settings_items: tuple, size: int, state: str) -> tuple:
    settings = dict(settings_items)
    raws, targets = maps(size, state)
    assigner = AnchorAssigner(torch.tensor(default_anchors(4)), [8, 16, 32, 64])
    pos = assigner.assign(targets, [tuple(r.shape[2:4]) for r in raws])

    def norm(value: torch.Tensor, leaves: list[torch.Tensor]) -> float:
        grads = torch.autograd.grad(value, leaves, retain_graph=True)
        return float(torch.cat([g.flatten() for g in grads]).norm())

    leaves = [r.clone().requires_grad_() for r in raws]
    ref = reference_loss(leaves, pos, size)
    ratios = {}
    for term in TERMS:
        only = {**settings, **{WEIGHT[t]: 0.0 for t in TERMS if t != term}}
        ours = PoseLoss(num_keypoints=K, num_classes=1, assigner=assigner, sigmas=torch.tensor(COCO_PERSON_SIGMAS),
                        cls_weight=0.0, **only)
        mine = [r.clone().requires_grad_() for r in raws]
        ratios[term] = norm(ours(mine, targets)[0], mine) / norm(ref[term], leaves)
    return tuple(ratios.items())


def test_reference_formula_sees_positives_on_every_level() -> None:
    raws, targets = maps(640, "init")
    model = YOLOPose("n", num_keypoints=K)
    pos = AnchorAssigner(model.anchors, model.strides).assign(targets, [tuple(r.shape[2:4]) for r in raws])
    assert set(pos.level.tolist()) == {0, 1, 2, 3} and BALANCE[4] == (4.0, 1.0, 0.25, 0.06)


@pytest.mark.parametrize("state", ["init", "converged"])
@pytest.mark.parametrize("config", COCO_CONFIGS, ids=[p.stem for p in COCO_CONFIGS])
def test_coco_config_gradients_match_the_reference_within_15_percent(config: Path, state: str) -> None:
    size = int(section(config, "data")["image_size"])
    ratios = gradient_ratios(config_loss(config), size, state)
    off = {t: round(r, 3) for t, r in ratios.items() if abs(r - 1) > TOLERANCE}
    assert not off, f"{config.name} ({state}): ours / reference gradient norm {off}"


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or COCO_CONFIGS
    print("| config | state | " + " | ".join(TERMS) + " |\n|---|---|" + "---|" * len(TERMS))
    for path in paths:
        size = int(section(path, "data")["image_size"])
        for state in ("init", "converged"):
            r = gradient_ratios(config_loss(path), size, state)
            print(f"| {path.stem} | {state} | " + " | ".join(f"{r[t]:.2f}" for t in TERMS) + " |")
