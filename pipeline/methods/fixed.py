"""Single-task learning and equal weighting of all tasks."""
from __future__ import annotations

from typing import Any

from pipeline.registry import METHODS
from pipeline.methods.base import FixedWeights


@METHODS.register("stl")
class SingleTask(FixedWeights):
    """Main task only: auxiliaries get weight 0."""

    def __init__(self, num_tasks: int, cfg: Any = None) -> None:
        super().__init__(num_tasks, cfg, aux_weight=0.0)


@METHODS.register("equal")
class EqualWeights(FixedWeights):
    """Every task weight 1."""

    def __init__(self, num_tasks: int, cfg: Any = None) -> None:
        super().__init__(num_tasks, cfg, aux_weight=1.0)
