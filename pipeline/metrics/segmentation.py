"""Dense segmentation metrics: a confusion matrix summed over evaluation chunks, then mean IoU and pixel
accuracy from it (so a split of any size fits in memory and the scores are those of the whole split)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """int64 [C, C] on the CPU, rows = ground truth, columns = prediction; target < 0 (ignore) is skipped."""
    keep = target >= 0
    t, p = target[keep].long(), pred[keep].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes).cpu()


def segmentation_scores(cm: Tensor) -> dict[str, float]:
    """``miou``: mean IoU (percent) over classes present in ground truth or prediction; ``pixel_acc`` (percent)."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    total = cm.sum()
    return {"miou": float(100 * (tp[present] / union[present]).mean()) if present.any() else 0.0,
            "pixel_acc": float(100 * tp.sum() / total) if total > 0 else 0.0}


@dataclass
class ConfusionMatrix:
    """Running confusion matrix of class logits [B, C, *pixels] (arg-max over dim 1) against labels [B, *pixels]
    (negative = ignored); ``scores()`` is ``segmentation_scores`` of the sum."""

    num_classes: int
    counts: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.counts = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, logits: Tensor, labels: Tensor) -> None:
        self.counts += confusion_matrix(logits.argmax(1), labels, self.num_classes)

    def scores(self) -> dict[str, float]:
        return segmentation_scores(self.counts)
