"""Classification metrics as running sums over evaluation chunks, so a split of any size fits in memory."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor


@dataclass
class TopKAccuracy:
    """Top-k accuracies (percent) and the mean cross-entropy of class logits [B, C] against labels [B]."""

    ks: tuple[int, ...] = (1,)
    correct: dict[int, int] = field(default_factory=dict)
    loss_sum: float = 0.0
    count: int = 0

    def update(self, logits: Tensor, labels: Tensor) -> None:
        labels = labels.long()
        best = logits.topk(min(max(self.ks), logits.shape[1]), dim=1).indices
        for k in self.ks:
            self.correct[k] = self.correct.get(k, 0) + int((best[:, :k] == labels[:, None]).any(1).sum())
        self.loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        self.count += len(labels)

    def accuracy(self, k: int = 1) -> float:
        return 100.0 * self.correct.get(k, 0) / self.count

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.count
