"""MATLAB v5 files (SVHN's digits, Stanford Cars' devkit): reading with one ``DataError`` naming the file, and
byte-stable writing for the stand-ins."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import scipy.io

from pipeline.datasets.shared.base import DataError

MAT_HEADER = b"MATLAB 5.0 MAT-file, written by the auxbench stand-in generator".ljust(116)


def read_mat(path: Path, **options: Any) -> dict[str, Any]:
    """``scipy.io.loadmat(path, **options)``; a missing, v7.3 (HDF5) or unreadable file is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path} is missing")
    try:
        return scipy.io.loadmat(path, **options)
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5) files
        raise DataError(f"{path}: {err} (expected the official MATLAB v5 file)") from None
    except Exception as err:
        raise DataError(f"{path} is not a readable MATLAB file: {type(err).__name__}: {err}") from None


def write_mat(path: Path, variables: dict[str, Any]) -> None:
    """``scipy.io.savemat`` (v5) with a fixed header text: savemat stamps the time there, which would make
    identical stand-ins differ byte for byte (and in the prepared folder's hashes)."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, variables, format="5")
    path.write_bytes(MAT_HEADER + buf.getvalue()[len(MAT_HEADER):])
