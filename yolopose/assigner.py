"""Anchor/target assignment in the YOLOv5 style: width/height ratio test + neighbour cells.

A target matches an anchor when ``max(w/aw, aw/w, h/ah, ah/h) < anchor_t``; it is then assigned to
its own cell and to the two neighbouring cells nearest its centre (left/right and up/down). A target
that matches no anchor on any level (far smaller or larger than every anchor) is assigned to its
best-ratio anchor, own cell only, so that every ground-truth object gets at least one positive (YOLOv5
silently drops such targets).

Every level is assigned at once: one ``(L, 5, A, T)`` mask of (level, cell offset, anchor, target)
candidates and a single ``nonzero`` (the only host synchronisation), instead of two ``nonzero`` calls and
a dozen small ops per level. The positives come out level by level, and within a level in exactly the
order the former per-level loop produced (offset, then anchor, then target).
"""
from __future__ import annotations

from dataclasses import dataclass, fields as dataclass_fields

import torch

# Cell offsets (x, y) tried for each target: own cell, then left, up, right, down neighbours.
_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)
# The diagonal neighbours (left-up, right-up, left-down, right-down) that only the dynamic rule considers.
_DIAGONALS = torch.tensor([[1, 1], [-1, 1], [1, -1], [-1, -1]], dtype=torch.float32)


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


@dataclass
class Positives(LevelTargets):
    """The positives of every level in one set of tensors, level by level (``LevelTargets`` fields plus ``level``).

    Attributes:
        level: ``(P,)`` long level index of each positive (non-decreasing).
    """

    level: torch.Tensor

    def split(self, num_levels: int) -> list[LevelTargets]:
        """One ``LevelTargets`` per level (costs a host synchronisation: the per-level counts)."""
        counts = torch.bincount(self.level, minlength=num_levels).tolist()
        fields = ("batch", "anchor", "gy", "gx", "box", "anchor_wh", "cls", "keypoints", "target_index")
        parts = {f: getattr(self, f).split(counts) for f in fields}
        return [LevelTargets(**{f: parts[f][i] for f in fields}) for i in range(num_levels)]

    def subset(self, index: torch.Tensor) -> Positives:
        """The positives at ``index`` (a boolean mask or increasing long indices keep the level order)."""
        return Positives(**{f.name: getattr(self, f.name)[index] for f in dataclass_fields(self)})


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
        self._constants: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self._anchor_tables: dict[tuple, torch.Tensor] = {}

    def __call__(self, targets: torch.Tensor, grid_sizes: list[tuple[int, int]]) -> list[LevelTargets]:
        """Assign ``targets (T, 6 + 3K)`` rows ``[batch, cls, cx, cy, w, h, (x, y, v) * K]`` (input pixels).

        Args:
            grid_sizes: ``(H_l, W_l)`` of each level's map.
        Returns:
            one ``LevelTargets`` per level (``assign(...).split(L)``).
        """
        return self.assign(targets, grid_sizes).split(len(grid_sizes))

    def _level_constants(self, grid_sizes: list[tuple[int, int]], device: torch.device,
                         dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Anchors ``(L, A, 2)``, strides ``(L,)``, grid ``(w, h)`` ``(L, 2)`` and offsets ``(5, 2)`` on
        ``device`` (cached: building them is a host-to-device copy each)."""
        key = (tuple(map(tuple, grid_sizes)), device, dtype)
        if key not in self._constants:
            if len(self._constants) >= 16:   # a handful of input sizes at most; never grow without bound
                self._constants.clear()
            self._constants[key] = (
                self.anchors.to(device, dtype),
                torch.tensor(self.strides, device=device, dtype=dtype),
                torch.tensor([[w, h] for h, w in grid_sizes], device=device, dtype=dtype),
                _OFFSETS.to(device, dtype),
            )
        return self._constants[key]

    def anchor_index(self, pos: Positives, raws: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
        """``(P,)`` index of each positive's anchor in the concatenation of every level's flattened
        ``(B, A, H, W)`` anchors (the loss's objectness targets, the dynamic rule's one-person-per-anchor), and
        the number of anchors. The per-level ``[offset, H, W]`` table is cached per input shape (building it is
        a host-to-device copy)."""
        shapes = tuple(tuple(r.shape[:4]) for r in raws)
        device = pos.batch.device
        key = (shapes, device)
        if key not in self._anchor_tables:
            if len(self._anchor_tables) >= 16:   # multi-scale training: a handful of shapes; never grow without bound
                self._anchor_tables.clear()
            offsets = [0]
            for sh in shapes[:-1]:
                offsets.append(offsets[-1] + sh[0] * sh[1] * sh[2] * sh[3])
            self._anchor_tables[key] = torch.tensor([[o, sh[2], sh[3]] for o, sh in zip(offsets, shapes)],
                                                    device=device)
        offset, h, w = self._anchor_tables[key][pos.level].unbind(1)
        index = offset + ((pos.batch * shapes[0][1] + pos.anchor) * h + pos.gy) * w + pos.gx
        return index, sum(sh[0] * sh[1] * sh[2] * sh[3] for sh in shapes)

    def assign(self, targets: torch.Tensor, grid_sizes: list[tuple[int, int]],
               raws: list[torch.Tensor] | None = None) -> Positives:
        """The positives of every level at once, as ``Positives`` (see ``__call__`` for the arguments).

        ``raws`` (the predictions) are not used by this static rule; ``DynamicAssigner`` needs them.
        """
        return self.candidates(targets, grid_sizes, diagonal=False)

    def candidates(self, targets: torch.Tensor, grid_sizes: list[tuple[int, int]], diagonal: bool) -> Positives:
        """Every (level, cell, anchor, target) that passes the ratio test, in the target's own cell and the two
        neighbours nearest its centre (plus, with ``diagonal``, the cell across that corner: the 2 x 2 block of
        cells whose box-centre range ``-0.5..1.5`` reaches the target's centre); orphans get their best-ratio
        anchor in their own cell only. Ordered by level, then offset, anchor and target."""
        if len(grid_sizes) != len(self.strides):
            raise ValueError(f"got {len(grid_sizes)} grid sizes for {len(self.strides)} levels")
        anchors, strides, grid_wh, offsets = self._level_constants(grid_sizes, targets.device, targets.dtype)
        n_levels, n_anchors = anchors.shape[:2]
        k = (targets.shape[1] - 6) // 3
        # Ratio test of every target against every anchor of every level: (L, A, T).
        ratio = targets[None, None, :, 4:6] / anchors[:, :, None, :]
        worst = torch.maximum(ratio, 1 / ratio).amax(-1)
        match = worst < self.anchor_t
        # Fallback for targets no anchor accepts: their best-ratio anchor, own cell only.
        flat = worst.reshape(n_levels * n_anchors, -1)
        orphan = ~match.reshape(n_levels * n_anchors, -1).any(0)                              # (T,)
        best = flat.argmin(0)[None] == torch.arange(n_levels * n_anchors, device=targets.device)[:, None]
        forced = (best & orphan[None]).reshape(n_levels, n_anchors, -1)                        # (L, A, T)
        # Neighbour cells of each target centre on each level: (L, 4, T) for left, up, right, down.
        gxy = targets[None, :, 2:4] / strides[:, None, None]                                   # (L, T, 2)
        gxy_inv = grid_wh[:, None, :] - gxy
        g = self.neighbour
        near = torch.cat((((gxy % 1) < g) & (gxy > 1), ((gxy_inv % 1) < g) & (gxy_inv > 1)), -1)
        near = near.permute(0, 2, 1)                                                           # (L, 4, T)
        if diagonal:   # left-up, right-up, left-down, right-down: both of the corner's neighbours are near
            near = torch.cat((near, near[:, [0, 2, 0, 2]] & near[:, [1, 1, 3, 3]]), 1)        # (L, 8, T)
            offsets = torch.cat((offsets, _DIAGONALS.to(offsets)))
        cand = torch.cat(((match | forced)[:, None],                                           # own cell
                          (match[:, None] & near[:, :, None, :])), 1)                          # (L, 5|9, A, T)
        # Neighbours only for ratio matches: a forced (orphan) target keeps its own cell only.
        lvl, o_idx, a_idx, t_idx = cand.nonzero(as_tuple=True)
        t = targets[t_idx]
        stride = strides[lvl][:, None]
        gxy_p = t[:, 2:4] / stride
        cell = (gxy_p - offsets[o_idx] * g).floor()
        cell = torch.minimum(cell.clamp(min=0), grid_wh[lvl] - 1)
        kpt = t[:, 6:].reshape(-1, k, 3)
        kxy = kpt[..., :2] / stride[:, None] - cell[:, None, :]
        return Positives(
            batch=t[:, 0].long(), anchor=a_idx, gy=cell[:, 1].long(), gx=cell[:, 0].long(),
            box=torch.cat((gxy_p - cell, t[:, 4:6] / stride), 1),
            anchor_wh=anchors[lvl, a_idx] / stride, cls=t[:, 1].long(),
            keypoints=torch.cat((kxy, kpt[..., 2:3]), -1), target_index=t_idx, level=lvl,
        )


def gather_positive_rows(raws: list[torch.Tensor], pos: Positives) -> torch.Tensor:
    """Every positive's raw prediction row ``(P, 5 + C + 3K)`` from its level's ``(B, A, H, W, 5 + C + 3K)`` map.

    Each level reads all P rows at valid indices (row 0 for the other levels' positives) and keeps its own,
    so there are no per-level counts on the host. Needs at least one positive.
    """
    pred = None
    for lvl, raw in enumerate(raws):
        mine = pos.level == lvl
        rows = raw[torch.where(mine, pos.batch, 0), torch.where(mine, pos.anchor, 0),
                   torch.where(mine, pos.gy, 0), torch.where(mine, pos.gx, 0)]
        pred = rows if pred is None else torch.where(mine[:, None], rows, pred)
    return pred
