"""Aggregation over seeds: mean and standard error of the mean, as the papers report."""
from __future__ import annotations

import math
from typing import Iterable


def mean_sem(values: Iterable[float]) -> dict[str, float]:
    vals = list(values)
    n = len(vals)
    mean = sum(vals) / n
    sem = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1) / n) if n > 1 else 0.0
    return {"mean": mean, "sem": sem}


def aggregate(per_seed: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    names = next(iter(per_seed.values())).keys()
    return {name: mean_sem(m[name] for m in per_seed.values()) for name in names}


def format_mean_sem(mean: float, sem: float) -> str:
    """``mean ± sem`` with enough digits to tell methods apart."""
    digits = 2 if abs(mean) >= 10 else 3 if abs(mean) >= 1 else 4
    return f"{mean:.{digits}f} ± {sem:.{digits}f}"
