"""Aggregation over seeds: mean and standard error of the mean, as the papers report; metric directions."""
from __future__ import annotations

import math
from typing import Iterable

# Which way each metric a dataset reports improves. Explicit names first (every metric of every dataset in
# pipeline/datasets/), then a naming rule for new ones; a name neither covers raises instead of guessing.
LOWER_IS_BETTER = frozenset({"main_mse", "weight_error", "main_loss", "depth_abs_err", "depth_rel_err",
                             "normal_mean_deg", "normal_median_deg", "rmse", "mae"})
HIGHER_IS_BETTER = frozenset({"top1", "top3", "accuracy", "miou", "pixel_acc", "instance_miou", "class_miou"})
LOWER_SUFFIXES = ("loss", "mse", "mae", "err", "error", "deg")       # losses, errors, angles
HIGHER_PATTERNS = ("acc", "miou", "iou", "top", "within", "f1", "auc")  # accuracies, overlaps, shares


def higher_is_better(name: str) -> bool:
    """True if a larger value of metric ``name`` is better, False if a smaller one is.

    ``LOWER_IS_BETTER``/``HIGHER_IS_BETTER`` name the known metrics; otherwise a name ending in ``_loss``,
    ``_mse``, ``_mae``, ``_err``, ``_error`` or ``_deg`` is lower-better, one containing ``acc``, ``miou``/``iou``,
    ``top``, ``within``, ``f1`` or ``auc`` (e.g. ``normal_within_22.5``, ``miou/Chair``) higher-better.
    """
    if name in LOWER_IS_BETTER:
        return False
    if name in HIGHER_IS_BETTER:
        return True
    base = name.lower()
    if base.split("_")[-1] in LOWER_SUFFIXES or base in LOWER_SUFFIXES:
        return False
    if any(pattern in base for pattern in HIGHER_PATTERNS):
        return True
    raise ValueError(f"no direction known for metric {name!r}: add it to LOWER_IS_BETTER or HIGHER_IS_BETTER "
                     "in pipeline/metrics.py")


def mean_sem(values: Iterable[float]) -> dict[str, float]:
    vals = list(values)
    n = len(vals)
    mean = sum(vals) / n
    sem = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1) / n) if n > 1 else 0.0
    return {"mean": mean, "sem": sem}


def aggregate(per_seed: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    names = next(iter(per_seed.values())).keys()
    return {name: mean_sem(m[name] for m in per_seed.values()) for name in names}


def format_mean_sem(mean: float, sem: float | None) -> str:
    """``mean ± sem`` with enough digits to tell methods apart; just the mean when ``sem`` is None (one seed)."""
    digits = 2 if abs(mean) >= 10 else 3 if abs(mean) >= 1 else 4
    return f"{mean:.{digits}f}" if sem is None else f"{mean:.{digits}f} ± {sem:.{digits}f}"


def is_breakdown(name: str) -> bool:
    """A per-category part of a metric (``miou/<category>``): reported in reports/per_seed.json, not as a column."""
    return "/" in name


def summary_metrics(test: dict[str, dict[str, float]], steps: int, seeds: int, device: str) -> dict:
    """reports/metrics.json: ``test`` (mean and SEM per metric, in the dataset's order, main metric first; not
    the per-category breakdowns), then ``steps``, ``seeds`` (how many) and ``device``; nothing per seed, no
    validation, no breakdown (reports/per_seed.json has them)."""
    return {"test": {name: {"mean": v["mean"], "sem": v["sem"]} for name, v in test.items() if not is_breakdown(name)},
            "steps": int(steps), "seeds": int(seeds), "device": device}
