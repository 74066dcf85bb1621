"""NYUv2's split rule: the official train/test split, with validation and aux sets drawn from official train."""
from __future__ import annotations

from pipeline.datasets.shared.npy_layout import official_splits  # noqa: F401 (the rule lives there)


