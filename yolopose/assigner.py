"""Anchor/target assignment in the YOLOv5 style: width/height ratio test + neighbour cells.

A target matches an anchor when ``max(w/aw, aw/w, h/ah, ah/h) < anchor_t``; it is then assigned to
its own cell and to the two neighbouring cells nearest its centre (left/right and up/down). A target
that matches no anchor on any level (far smaller or larger than every anchor) is assigned to its
best-ratio anchor, own cell only, so that every ground-truth object gets at least one positive (YOLOv5
silently drops such targets).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Cell offsets (x, y) tried for each target: own cell, then left, up, right, down neighbours.
_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)


@dataclass
class LevelTargets:
    """Positives of one level; ``P`` = number of (target, anchor, cell) matches.

    Attributes:
        batch, anchor, gy, gx: ``(P,)`` long indices into the level's raw map ``(B, A, H, W, D)``.
        box: ``(P, 4)`` target ``(cx - gx, cy - gy, w, h)`` in grid units (pixels / stride).
        anchor_wh: ``(P, 2)`` matched anchor size in grid units.
        cls: ``(P,)`` long class index.
        keypoints: ``(P, K, 3)`` target ``(x - gx, y - gy, v)``, xy in grid units.
        target_index: ``(P,)`` row of the input targets each positive came from.
    """

    batch: torch.Tensor
    anchor: torch.Tensor
    gy: torch.Tensor
    gx: torch.Tensor
    box: torch.Tensor
    anchor_wh: torch.Tensor
    cls: torch.Tensor
    keypoints: torch.Tensor
    target_index: torch.Tensor


class AnchorAssigner:
    """Match targets to anchors and cells on every level.

    Args:
        anchors: ``(L, A, 2)`` anchor sizes in input pixels.
        strides: ``L`` strides in pixels.
        anchor_t: maximum width/height ratio between a target and a matching anchor (YOLOv5: 4).
        neighbour: how close (in cells, 0..0.5) a centre must be to a cell border for the neighbour
            across that border to be a positive too (YOLOv5: 0.5, i.e. always the two nearest).
    """

    def __init__(self, anchors: torch.Tensor, strides: list[int], anchor_t: float = 4.0,
                 neighbour: float = 0.5) -> None:
        self.anchors = anchors
        self.strides = list(strides)
        self.anchor_t = anchor_t
        self.neighbour = neighbour

    def __call__(self, targets: torch.Tensor, grid_sizes: list[tuple[int, int]]) -> list[LevelTargets]:
        """Assign ``targets (T, 6 + 3K)`` rows ``[batch, cls, cx, cy, w, h, (x, y, v) * K]`` (input pixels).

        Args:
            grid_sizes: ``(H_l, W_l)`` of each level's map.
        Returns:
            one ``LevelTargets`` per level.
        """
        anchors = self.anchors.to(targets.device, targets.dtype)
        n_levels, n_anchors = anchors.shape[:2]
        k = (targets.shape[1] - 6) // 3
        # Ratio test of every target against every anchor of every level: (L, A, T).
        ratio = targets[None, None, :, 4:6] / anchors[:, :, None, :]
        worst = torch.maximum(ratio, 1 / ratio).amax(-1)
        match = worst < self.anchor_t
        # Fallback for targets no anchor accepts: their best-ratio anchor, own cell only.
        flat = worst.reshape(n_levels * n_anchors, -1)
        orphan = ~match.reshape(n_levels * n_anchors, -1).any(0)                      # (T,)
        best = torch.nn.functional.one_hot(flat.argmin(0), n_levels * n_anchors).T.bool()  # (L*A, T)
        forced = (best & orphan[None]).reshape(n_levels, n_anchors, -1)
        out = []
        for lvl, (h, w) in enumerate(grid_sizes):
            out.append(self._assign_level(targets, anchors[lvl], float(self.strides[lvl]), h, w,
                                          match[lvl], forced[lvl], k))
        return out

    def _assign_level(self, targets: torch.Tensor, anchors: torch.Tensor, stride: float, h: int, w: int,
                      match: torch.Tensor, forced: torch.Tensor, k: int) -> LevelTargets:
        """Positives of one level; ``match``/``forced`` are ``(A, T)`` masks."""
        a_idx, t_idx = (match | forced).nonzero(as_tuple=True)
        own_only = forced[a_idx, t_idx] & ~match[a_idx, t_idx]
        t = targets[t_idx]
        gxy = t[:, 2:4] / stride
        gxy_inv = torch.tensor([w, h], device=t.device, dtype=t.dtype) - gxy
        g = self.neighbour
        frac, frac_inv = gxy % 1, gxy_inv % 1
        near = torch.stack((
            torch.ones_like(own_only),
            (frac[:, 0] < g) & (gxy[:, 0] > 1) & ~own_only,          # left neighbour
            (frac[:, 1] < g) & (gxy[:, 1] > 1) & ~own_only,          # upper neighbour
            (frac_inv[:, 0] < g) & (gxy_inv[:, 0] > 1) & ~own_only,  # right neighbour
            (frac_inv[:, 1] < g) & (gxy_inv[:, 1] > 1) & ~own_only,  # lower neighbour
        ))                                                            # (5, P0)
        o_idx, p_idx = near.nonzero(as_tuple=True)
        offsets = _OFFSETS.to(t.device, t.dtype)[o_idx] * g
        gxy_p = gxy[p_idx]
        cell = (gxy_p - offsets).floor()
        cell[:, 0].clamp_(0, w - 1)
        cell[:, 1].clamp_(0, h - 1)
        tp = t[p_idx]
        kpt = tp[:, 6:].reshape(-1, k, 3)
        kxy = kpt[..., :2] / stride - cell[:, None, :]
        return LevelTargets(
            batch=tp[:, 0].long(), anchor=a_idx[p_idx], gy=cell[:, 1].long(), gx=cell[:, 0].long(),
            box=torch.cat((gxy_p - cell, tp[:, 4:6] / stride), 1),
            anchor_wh=anchors[a_idx[p_idx]] / stride, cls=tp[:, 1].long(),
            keypoints=torch.cat((kxy, kpt[..., 2:3]), -1), target_index=t_idx[p_idx],
        )
