"""Rows of a prepared HDF5 file read on demand, for datasets too large to hold in memory (``Dataset.open_rows``).

``H5Rows`` stands where ``TaskData.inputs``/``targets`` hold a tensor: ``rows[index]`` reads just those rows
and returns a CPU tensor, for any index a tensor accepts in dimension 0 (an int, a slice, a list, an integer
array or tensor, a boolean mask), optionally followed by indices of the other dimensions. ``len``, ``shape``,
``dtype``, ``dim()`` and ``device`` answer as a tensor's would. It pickles without its file handle, and each
process (a ``DataLoader`` worker) opens the file itself on its first read: HDF5 handles must not cross a fork.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np
import torch
from torch import Tensor

from pipeline.datasets.shared.base import DataError

# Turns the arrays read from ``keys`` (rows [B, ...] each, in ``keys`` order) into the rows served; a
# module-level function, so that it pickles into worker processes.
Assemble = Callable[[Sequence[np.ndarray]], np.ndarray]


class H5Rows:
    """Rows of the datasets ``keys`` of the HDF5 file ``path``, combined by ``assemble`` (default: the one key's
    rows as stored)."""

    def __init__(self, path: Path | str, keys: Sequence[str], assemble: Assemble | None = None) -> None:
        self.path, self.keys, self.assemble = Path(path), tuple(keys), assemble
        if assemble is None and len(self.keys) != 1:
            raise ValueError(f"H5Rows over {self.keys} needs an assemble function")
        self._file: h5py.File | None = None
        self._pid = -1
        f = self._open()
        lengths = {k: len(f[k]) for k in self.keys}
        if len(set(lengths.values())) != 1:
            raise DataError(f"{self.path}: datasets {lengths} differ in their number of rows")
        self._len = lengths[self.keys[0]]
        # the served row's shape and dtype, from row 0 through the same path every read takes
        first = self._read(np.zeros(1, np.int64)) if self._len else None
        stored = f[self.keys[0]]
        self.row_shape = tuple(first.shape[1:]) if first is not None else tuple(stored.shape[1:])
        self.dtype = torch.from_numpy(first[:0]).dtype if first is not None else torch.from_numpy(
            np.empty(0, stored.dtype)).dtype

    # -- what a tensor answers ---------------------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._len, *self.row_shape))

    def dim(self) -> int:
        return 1 + len(self.row_shape)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def nbytes(self) -> int:
        """Bytes the rows would take in memory (what ``data_loading: auto`` weighs)."""
        return self._len * int(np.prod(self.row_shape, dtype=np.int64)) * torch.empty(0, dtype=self.dtype).element_size()

    def __getitem__(self, index: Any) -> Tensor:
        rest: tuple[Any, ...] = ()
        if isinstance(index, tuple):
            index, rest = index[0], index[1:]
        rows, squeeze = self._rows(index)
        out = torch.from_numpy(self._read(rows))
        if squeeze:
            out = out[0]
        return out[(slice(None),) * (0 if squeeze else 1) + rest] if rest else out

    # -- reading ---------------------------------------------------------------------------------

    def _rows(self, index: Any) -> tuple[np.ndarray, bool]:
        """Row numbers (int64, in the order asked, negatives wrapped) and whether dimension 0 is dropped."""
        n = self._len
        if isinstance(index, (int, np.integer)) or (isinstance(index, Tensor) and index.dim() == 0):
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"row {i} is out of range for {n} rows of {self.path}")
            return np.array([i % n], np.int64), True
        if isinstance(index, slice):
            return np.arange(n, dtype=np.int64)[index], False
        arr = index.detach().cpu().numpy() if isinstance(index, Tensor) else np.asarray(index)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise IndexError(f"a boolean mask of shape {arr.shape} does not fit {n} rows of {self.path}")
            return np.flatnonzero(arr).astype(np.int64), False
        arr = arr.astype(np.int64).reshape(-1)
        if arr.size and (arr.min() < -n or arr.max() >= n):
            raise IndexError(f"rows {arr.min()}..{arr.max()} are out of range for {n} rows of {self.path}")
        return arr % max(n, 1), False

    def _open(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as err:
                raise DataError(f"{self.path} is not a readable HDF5 file: {err}") from None
            self._pid = os.getpid()
        return self._file

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """The rows, each stored run of consecutive rows read as one slice (HDF5 reads slices fastest)."""
        f = self._open()
        order = np.unique(rows)  # sorted, distinct
        parts: list[list[np.ndarray]] = [[] for _ in self.keys]
        if order.size:
            breaks = np.flatnonzero(np.diff(order) != 1) + 1
            for run in np.split(order, breaks):
                for part, key in zip(parts, self.keys):
                    part.append(f[key][int(run[0]): int(run[-1]) + 1])
        arrays = [np.concatenate(p) if p else np.empty((0, *f[k].shape[1:]), f[k].dtype)
                  for p, k in zip(parts, self.keys)]
        block = self.assemble(arrays) if self.assemble is not None else arrays[0]
        return block[np.searchsorted(order, rows)] if order.size != rows.size or (order != rows).any() else block

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": -1}

    def __repr__(self) -> str:
        return f"H5Rows({self.path}, {self.keys}, shape={tuple(self.shape)}, dtype={self.dtype})"


def is_file_backed(data: Any) -> bool:
    """Whether a ``TaskData`` reads its rows from files on demand (``Dataset.open_rows``) rather than holding them."""
    return not isinstance(data.inputs, Tensor)
