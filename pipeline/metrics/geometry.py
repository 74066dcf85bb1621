"""Dense geometry metrics: depth errors over valid pixels and angles between surface normals, accumulated
over evaluation chunks (sums for depth, the angles themselves for the normals' median)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)  # degrees: the usual "within" thresholds


def depth_error_sums(pred: Tensor, target: Tensor) -> Tensor:
    """[3] float64: sum |d - d*|, sum |d - d*| / d*, number of valid pixels (d* > 0).
    ``pred`` [B, 1, H, W] or [B, H, W], ``target`` [B, H, W]."""
    pred = pred.reshape(target.shape)
    valid = target > 0
    err = (pred[valid] - target[valid]).abs().double()
    return torch.stack([err.sum(), (err / target[valid].double()).sum(), valid.sum().double()]).cpu()


def depth_scores(sums: Tensor) -> dict[str, float]:
    """``depth_abs_err`` and ``depth_rel_err``: mean absolute and relative error over the valid pixels (NaN: none)."""
    count = float(sums[2])
    return {"depth_abs_err": float(sums[0]) / count if count else math.nan,
            "depth_rel_err": float(sums[1]) / count if count else math.nan}


def normal_angles(pred: Tensor, target: Tensor) -> Tensor:
    """Angles in degrees between [B, 3, H, W] normals at pixels whose ground truth is non-zero (a flat CPU tensor)."""
    valid = target.abs().sum(1) > 0
    cos = F.cosine_similarity(pred, target, dim=1)[valid].clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos.double())).cpu()


def normal_scores(angles: Tensor, thresholds: tuple[float, ...] = NORMAL_THRESHOLDS) -> dict[str, float]:
    """Mean and median angle (degrees) and percent of pixels within each threshold (NaN when there is no pixel)."""
    a = angles.double().numpy()
    if a.size == 0:
        return {"normal_mean_deg": math.nan, "normal_median_deg": math.nan,
                **{f"normal_within_{t:g}": math.nan for t in thresholds}}
    return {"normal_mean_deg": float(a.mean()), "normal_median_deg": float(np.median(a)),
            **{f"normal_within_{t:g}": float(100 * (a < t).mean()) for t in thresholds}}


@dataclass
class DepthErrors:
    """Running ``depth_error_sums``; ``scores()`` is ``depth_scores`` of the total."""

    sums: Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.sums += depth_error_sums(pred, target)

    def scores(self) -> dict[str, float]:
        return depth_scores(self.sums)


@dataclass
class NormalAngles:
    """The ``normal_angles`` of every chunk (kept as float32, for the median); ``scores()`` is ``normal_scores``."""

    angles: list[Tensor] = field(default_factory=list)

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.angles.append(normal_angles(pred, target).float())

    def scores(self) -> dict[str, float]:
        return normal_scores(torch.cat(self.angles) if self.angles else torch.zeros(0))
