"""Dynamic anchor assignment: each person's positives chosen by a cost computed from the predictions.

The candidates are the anchors that fit the person (``AnchorAssigner``'s width/height ratio test) in the 2 x 2
block of cells whose box-centre range (``-0.5..1.5`` cells, ``geometry.decode_box_xy``) reaches the person's
centre: the static rule's own cell and two nearest neighbours, plus the cell across that corner. Among them,
SimOTA-style (YOLOX; YOLOX-Pose puts OKS in the cost):

1. cost of a candidate = ``cls_cost * BCE(objectness [, class], 1) + iou_cost * -log IoU + oks_cost * -log OKS``,
   from its current (detached) prediction of the person's box and keypoints;
2. dynamic k of a person = ``max(1, floor(sum of its candidates' top-``topq`` IoUs))``: a person the network
   already boxes well gets more positives, one it misses gets its single best anchor;
3. each person takes its k cheapest candidates;
4. one person per anchor: where two people chose the same anchor, the cheaper pair keeps it;
5. a person left without a positive (all its chosen anchors went to cheaper pairs, or its only candidate, an
   orphan's forced anchor, is held) takes its cheapest anchor that is free or held by a person who can give it
   up (one with two positives or more, or one with a free candidate to move to); three such rounds. Every
   person then keeps a positive unless the people around it leave no anchor it fits (e.g. two identical
   annotations that fit a single anchor).

Everything runs on the predictions' device as sorts and scatters over all candidates of the batch at once: no
per-person Python loop; two host synchronisations (the candidates' ``nonzero`` and the final selection).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from yolopose.assigner import AnchorAssigner, Positives, gather_positive_rows
from yolopose.geometry import decode_box_wh, decode_box_xy, decode_keypoint_xy, keypoint_similarity, paired_iou

_LOG_EPS = 1e-8


def rank_within_groups(group: torch.Tensor, value: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``(N,)`` rank of each element among the elements of its group, by ascending ``value`` (ties: lower index
    first). ``group (N,)`` long in ``[0, num_groups)``."""
    order = torch.argsort(value, stable=True)
    order = order[torch.argsort(group[order], stable=True)]          # by group, then by value
    counts = torch.bincount(group, minlength=num_groups)
    start = counts.cumsum(0) - counts
    rank = torch.empty_like(group)
    rank[order] = torch.arange(group.numel(), device=group.device) - start[group[order]]
    return rank


def lowest_per_key(key: torch.Tensor, value: torch.Tensor, active: torch.Tensor, num_keys: int) -> torch.Tensor:
    """``(N,)`` bool: the active element with the lowest ``value`` of each key (ties: the lowest index)."""
    inf = torch.finfo(value.dtype).max
    masked = value.masked_fill(~active, inf)
    best = torch.full((num_keys,), inf, dtype=value.dtype, device=value.device)
    best = best.scatter_reduce(0, key, masked, "amin")
    win = active & (masked == best[key])
    index = torch.arange(key.numel(), device=key.device)
    first = torch.full((num_keys,), key.numel(), dtype=index.dtype, device=key.device)
    first = first.scatter_reduce(0, key, index.masked_fill(~win, key.numel()), "amin")
    return win & (index == first[key])


class DynamicAssigner(AnchorAssigner):
    """SimOTA-style assignment among the anchors that fit each person (see the module docstring).

    Args:
        anchors, strides, anchor_t, neighbour: as ``AnchorAssigner`` (they define the candidates).
        sigmas: ``(K,)`` OKS sigmas of the dataset (the OKS cost).
        num_classes: C (with C > 1 the class score joins the objectness in the classification cost).
        topq: how many of a person's best IoUs are summed into its dynamic k.
        cls_cost, iou_cost, oks_cost: weights of the cost's three terms.
    """

    def __init__(self, anchors: torch.Tensor, strides: list[int], *, sigmas: torch.Tensor, num_classes: int = 1,
                 anchor_t: float = 4.0, neighbour: float = 0.5, topq: int = 10, cls_cost: float = 1.0,
                 iou_cost: float = 3.0, oks_cost: float = 1.0) -> None:
        super().__init__(anchors, strides, anchor_t=anchor_t, neighbour=neighbour)
        if topq < 1:
            raise ValueError(f"topq must be >= 1, got {topq}")
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
        self.num_classes, self.topq = num_classes, topq
        self.rescue_rounds = 3
        self.cost_weights = (cls_cost, iou_cost, oks_cost)

    def assign(self, targets: torch.Tensor, grid_sizes: list[tuple[int, int]],
               raws: list[torch.Tensor] | None = None) -> Positives:
        """The chosen positives of every level (``Positives``, in level order).

        Args:
            targets: ``(T, 6 + 3K)`` rows ``[batch, cls, cx, cy, w, h, (x, y, v) * K]`` in input pixels.
            grid_sizes: ``(H_l, W_l)`` of each level's map.
            raws: the predictions, one ``(B, A, H_l, W_l, 5 + C + 3K)`` map per level (read, never differentiated).
        """
        if raws is None:
            raise ValueError("the dynamic assigner needs the predictions (raws)")
        cand = self.candidates(targets, grid_sizes, diagonal=True)
        if cand.batch.numel() == 0:
            return cand
        with torch.no_grad():
            pred = gather_positive_rows(raws, cand)
            pred = pred.to(torch.promote_types(pred.dtype, torch.float32))
            cost, iou = self.cost(pred, cand)
            keep = self.select(cost, iou, cand, targets.shape[0], raws)
        return cand.subset(keep)

    def cost(self, pred: torch.Tensor, cand: Positives) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cost (N,), iou (N,))`` of the candidates from their raw rows ``pred (N, 5 + C + 3K)``."""
        c = self.num_classes
        w_cls, w_iou, w_oks = self.cost_weights
        pbox = torch.cat((decode_box_xy(pred[:, :2]), decode_box_wh(pred[:, 2:4], cand.anchor_wh)), 1)
        iou = paired_iou(pbox, cand.box)
        cls = F.softplus(-pred[:, 4])                                            # BCE(objectness, 1)
        if c > 1:
            cls = cls + F.softplus(-pred[:, 5:5 + c].gather(1, cand.cls[:, None]).squeeze(1))
        cost = w_cls * cls - w_iou * torch.log(iou + _LOG_EPS)
        if w_oks:
            k = cand.keypoints.shape[1]
            pxy = decode_keypoint_xy(pred[:, 5 + c:].reshape(-1, k, 3)[..., :2])
            labelled = (cand.keypoints[..., 2] > 0).to(pred.dtype)
            sim = keypoint_similarity(pxy, cand.keypoints[..., :2], cand.box[:, 2] * cand.box[:, 3],
                                      self.sigmas.to(pred.device, pred.dtype))
            n_lab = labelled.sum(1)
            oks = (sim * labelled).sum(1) / n_lab.clamp(min=1)
            cost = cost - w_oks * torch.log(oks + _LOG_EPS) * (n_lab > 0)
        return cost, iou

    def select(self, cost: torch.Tensor, iou: torch.Tensor, cand: Positives, num_targets: int,
               raws: list[torch.Tensor]) -> torch.Tensor:
        """``(N,)`` bool: the candidates kept (steps 2-5 of the module docstring)."""
        t_idx = cand.target_index
        # 2. dynamic k from each person's top-q IoUs.
        top = rank_within_groups(t_idx, -iou, num_targets) < self.topq
        k = iou.new_zeros(num_targets).index_add_(0, t_idx, iou * top).floor().clamp(min=1)
        # 3. each person's k cheapest candidates.
        chosen = rank_within_groups(t_idx, cost, num_targets) < k[t_idx]
        # 4. one person per anchor.
        key, num_keys = self.anchor_index(cand, raws)
        keep = lowest_per_key(key, cost, chosen, num_keys)
        # 5. people left without a positive (e.g. one whose only candidate another person holds).
        for _ in range(self.rescue_rounds):
            keep = self._rescue(keep, cost, t_idx, key, num_targets, num_keys)
        return keep

    @staticmethod
    def _rescue(keep: torch.Tensor, cost: torch.Tensor, t_idx: torch.Tensor, key: torch.Tensor, num_targets: int,
                num_keys: int) -> torch.Tensor:
        """One round of step 5: each person without a positive takes its cheapest free anchor; one with no free
        candidate takes its cheapest anchor held by a person who can give it up: one with two positives or more, or
        one with a free candidate, which it moves to in the next round (one anchor per giver and per taker)."""
        count = torch.zeros(num_targets, dtype=torch.long, device=cost.device).index_add_(0, t_idx, keep.long())
        holder = torch.full((num_keys,), -1, dtype=torch.long, device=cost.device)
        holder = holder.index_put_((key[keep],), t_idx[keep])[key]          # (N,) who holds the anchor, -1: nobody
        free = torch.zeros(num_targets, dtype=torch.long, device=cost.device).index_add_(0, t_idx, (holder < 0).long())
        giver = holder.clamp(min=0)
        can_give = (holder >= 0) & ((count[giver] >= 2) | (free[giver] > 0))
        can = (count[t_idx] == 0) & torch.where(free[t_idx] > 0, holder < 0, can_give)
        take = lowest_per_key(t_idx, cost, can, num_targets)                # each taker's cheapest anchor
        take = lowest_per_key(key, cost, take, num_keys)                    # one taker per anchor
        taken = take & (holder >= 0)
        take = take & ~(taken & ~lowest_per_key(giver, cost, taken, num_targets))   # one anchor per giver
        given = torch.zeros(num_keys, dtype=torch.bool, device=cost.device)
        given = given.index_fill_(0, key[take & (holder >= 0)], True)
        return (keep & ~given[key]) | take
