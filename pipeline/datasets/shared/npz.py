"""The prepared layout of the small array datasets: ``data.npz`` beside ``meta.json``, read with one clear error."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.io import load_npz
from pipeline.datasets.shared.base import DataError


def read_prepared(folder: Path, dataset: str) -> tuple[dict[str, np.ndarray], dict[str, Any], Path, Path]:
    """``(arrays, meta, data_file, meta_file)`` of a prepared folder; a missing file names the stage to run."""
    folder = Path(folder)
    data_file, meta_file = folder / "data.npz", folder / "meta.json"
    for f in (data_file, meta_file):
        if not f.is_file():
            raise DataError(f"{f} is missing: run `dvc repro prepare` (with dataset: {dataset})")
    try:
        arrays = load_npz(data_file)
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{data_file} or {meta_file} is not readable: {err}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_file}: expected a JSON object, got {type(meta).__name__}")
    return arrays, meta, data_file, meta_file
