"""Point-cloud part segmentation metrics (the PointNet/DGCNN protocol, as in AuxiLearn Table 7).

The argmax is restricted to the parts of each shape's (known) category, and the IoU of every part of that
category is computed per shape (a part absent from both prediction and ground truth counts as 1);
``instance_miou`` averages over shapes, ``miou/<category>`` over a category's shapes and ``class_miou`` over
categories, in percent. ``PartIoU`` accumulates the per-shape IoUs over evaluation chunks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def part_mask(parts_per_category: Sequence[Sequence[int]], num_parts: int) -> Tensor:
    """[C, num_parts] bool: which global part ids belong to each category."""
    mask = torch.zeros(len(parts_per_category), num_parts, dtype=torch.bool)
    for c, parts in enumerate(parts_per_category):
        mask[c, list(parts)] = True
    return mask


def restricted_argmax(logits: Tensor, category: Tensor, mask: Tensor) -> Tensor:
    """Predicted part per point [B, N] from logits [B, K, N], choosing only among the shape's category's parts."""
    allowed = mask.to(logits.device)[category.long()]  # [B, K]
    return logits.masked_fill(~allowed[:, :, None], float("-inf")).argmax(dim=1)


def shape_ious(pred: Tensor, labels: Tensor, category: Tensor, mask: Tensor) -> Tensor:
    """Per-shape mean IoU [B] over the parts of its category; a part absent from both counts as IoU 1."""
    k = mask.shape[1]
    p = F.one_hot(pred.long(), k).bool()  # [B, N, K]
    g = F.one_hot(labels.long(), k).bool()
    inter = (p & g).sum(1).double()
    union = (p | g).sum(1).double()
    iou = torch.where(union == 0, torch.ones_like(inter), inter / union.clamp_min(1))
    own = mask.to(pred.device)[category.long()].double()  # [B, K]
    return (iou * own).sum(1) / own.sum(1).clamp_min(1)


def miou_summary(ious: Tensor, category: Tensor, category_names: Sequence[str]) -> dict[str, float]:
    """``instance_miou`` (mean over shapes), ``miou/<name>`` (mean over a category's shapes) and ``class_miou``
    (mean over the categories present), in percent."""
    out: dict[str, float] = {"instance_miou": 100.0 * float(ious.mean())}
    per_class = []
    for c, name in enumerate(category_names):
        sel = category == c
        if sel.any():
            value = 100.0 * float(ious[sel].mean())
            out[f"miou/{name}"] = value
            per_class.append(value)
    out["class_miou"] = float(np.mean(per_class))
    return out



@dataclass
class PartIoU:
    """Per-shape part IoUs over evaluation chunks: ``update`` with part logits [B, K, N], labels [B, N] and
    categories [B]; ``summary`` gives ``miou_summary`` of every shape seen."""

    parts_per_category: Sequence[Sequence[int]]
    num_parts: int
    category_names: Sequence[str]
    ious: list[Tensor] = field(default_factory=list)
    categories: list[Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.mask = part_mask(self.parts_per_category, self.num_parts)

    def update(self, logits: Tensor, labels: Tensor, category: Tensor) -> None:
        category = category.long()
        pred = restricted_argmax(logits, category, self.mask)
        self.ious.append(shape_ious(pred, labels.long(), category, self.mask).cpu())
        self.categories.append(category.cpu())

    def summary(self) -> dict[str, float]:
        return miou_summary(torch.cat(self.ious), torch.cat(self.categories), self.category_names)
