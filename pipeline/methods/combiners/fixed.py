"""Fixed task weights: single-task learning (STL) and equal weighting of all tasks."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pipeline.methods.base import LossCombiner, MethodSpec, NoOuterUpdate, Roles, register


class FixedWeights(LossCombiner):
    """L_T = Σ_j w_j · mean_b ℓ_j with constant weights: the main task 1, the auxiliaries ``aux_weight``."""

    def __init__(self, num_tasks: int, aux_weight: float) -> None:
        super().__init__(num_tasks)
        weights = torch.full((num_tasks,), float(aux_weight))
        weights[0] = 1.0
        self.register_buffer("weights", weights)

    def training_loss(self, losses: Tensor) -> Tensor:
        return (losses.mean(0) * self.weights).sum()


def fixed_weights(aux_weight: float) -> Any:
    """The ``build`` of a method that is fixed weights and nothing else."""

    def build(num_tasks: int, cfg: Any, bilevel: Any, dataset: Any, data: Any, params: Any) -> Roles:
        return Roles(FixedWeights(num_tasks, aux_weight), NoOuterUpdate(), None)

    return build


register(MethodSpec("stl", fixed_weights(0.0), group="single_task", description="main task only"))
register(MethodSpec("equal", fixed_weights(1.0), group="fixed", requires=frozenset({"auxiliaries"}),
                    description="every task weight 1"))
