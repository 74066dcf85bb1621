"""The prepared HDF5 layout's common parts: byte-stable writing (no timestamps: the same inputs give the same
bytes, so manifest hashes and DVC see no change), text arrays, file attributes, and opening a prepared file
with one ``DataError`` naming it (and the stage that makes it, when it is missing)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import h5py

from pipeline.datasets.shared.base import DataError

TEXT = h5py.string_dtype("utf-8")  # variable-length UTF-8 strings (names, paths, ids)


def put(f: h5py.File, name: str, data: Any, dtype: Any = None) -> h5py.Dataset:
    """A dataset without creation timestamps (``track_times=False``)."""
    return f.create_dataset(name, data=data, dtype=dtype, track_times=False)


def put_attrs(f: h5py.File, attrs: dict[str, Any]) -> None:
    """File attributes; ``None`` is stored as "" (HDF5 has no null)."""
    for key, value in attrs.items():
        f.attrs[key] = "" if value is None else value


def text(values: Any) -> list[str]:
    """A stored text array as ``str``s (h5py returns bytes)."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def file_attrs(f: h5py.File) -> dict[str, Any]:
    """The file's attributes, text decoded."""
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


@contextlib.contextmanager
def open_prepared(path: Path, stage: str) -> Iterator[h5py.File]:
    """``path`` open for reading; a missing file names ``stage`` (``prepare``), an unreadable one says so."""
    if not path.is_file():
        raise DataError(f"{path} is missing: run `dvc repro {stage}`")
    try:
        with h5py.File(path, "r") as f:
            yield f
    except OSError as err:
        raise DataError(f"{path} is not a readable HDF5 file: {err}") from None
