"""How a run's batches reach the device: held in memory, or streamed from the prepared file (``data_loading``).

Both paths share ``EpochOrder``, the one definition of a stream's batch order: each epoch a permutation of
the stream's rows drawn from the stream's seeded generator when the epoch's first batch is asked for, cut
into full batches (a tail that does not fill one is skipped); a full-batch stream is every row, no draw.
The in-memory path indexes tensors it holds on the device; ``LoaderRows`` reads an epoch's batches through a
``torch.utils.data.DataLoader`` (worker processes, pinned memory, non-blocking copies) from ``H5Rows``. The
augmentation (``Dataset.batch_transform``) stays on the device in the main process, drawing from the same
generator after each batch as before: a seed gives the same batches, augmented alike, on either path.

Since the permutation of epoch e + 1 is drawn from the generator after epoch e's augmentations, the loader
cannot read across an epoch boundary: it prefetches within an epoch and restarts (its persistent workers
kept) at the next one.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from pipeline.datasets.shared.base import Dataset, TaskData
from pipeline.datasets.shared.rows import is_file_backed

DataLoading = Literal["auto", "memory", "stream"]


def in_memory_bytes(data: TaskData) -> int:
    """Bytes that ``data``'s inputs and targets take, or would take, in memory."""
    return sum(int(getattr(a, "nbytes", 0)) or a.numel() * a.element_size() for a in (data.inputs, data.targets))


def load_data(dataset: Dataset, folder: Path, mode: DataLoading, stream_above_mb: float) -> TaskData:
    """The prepared data of ``dataset``: held in memory (``load``), or read on demand (``open_rows``) when
    ``mode`` is ``stream``, or ``auto`` and the dataset streams and would take more than ``stream_above_mb``
    MiB in memory. The same rows either way."""
    if mode == "memory" or not type(dataset).streams():
        if mode == "stream":  # validation refuses this first; a direct caller gets the same words
            raise ValueError(f"data_loading: stream, but dataset {dataset.name} has no file-backed reader")
        return dataset.load(folder)
    data = dataset.open_rows(folder)
    if mode == "auto" and in_memory_bytes(data) <= stream_above_mb * 2**20:
        return dataset.load(folder)
    return data


class EpochOrder:
    """The batch order of one stream over ``n`` rows (positions 0..n-1), drawn from ``generator``: an epoch is a
    permutation cut into full batches from position 0 on (a tail that does not fill one is skipped)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        if n == 0:
            raise ValueError("a batch stream needs at least one sample")
        self.n, self.generator = n, generator
        self.batch_size = batch_size if 0 < batch_size < n else n

    @property
    def full_batch(self) -> bool:
        return self.batch_size == self.n

    def permutation(self) -> Tensor:
        """The next epoch's order (CPU int64); drawn now, from the stream's generator."""
        return torch.randperm(self.n, generator=self.generator)

    def exhausted(self, pos: int) -> bool:
        """Whether an epoch at ``pos`` has no full batch left (the next batch starts a new epoch)."""
        return pos + self.batch_size > self.n

    def batches(self, order: Tensor, pos: int) -> list[Tensor]:
        """The batches of the epoch ``order`` from position ``pos`` on."""
        return list(order[pos: self.n - (self.n - pos) % self.batch_size].split(self.batch_size))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)


class _Rows(TorchDataset):
    """``dataset[positions]`` = (inputs, targets) of those stream positions: one read per batch."""

    def __init__(self, data: TaskData, rows: np.ndarray) -> None:
        self.inputs, self.targets, self.rows = data.inputs, data.targets, np.asarray(rows, np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        rows = self.rows[positions.numpy()]
        return self.inputs[rows], self.targets[rows]


class _Batches:
    """The sampler: the current epoch's batches, set before each pass of the loader."""

    def __init__(self) -> None:
        self.batches: list[Tensor] = []

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class LoaderRows:
    """Reads the batches of one epoch at a time through a ``DataLoader`` with ``workers`` processes (0: in this
    process), pinned when ``device`` is a GPU, copied without blocking."""

    def __init__(self, data: TaskData, rows: np.ndarray, device: torch.device, workers: int) -> None:
        self.device, self._sampler = device, _Batches()
        pin = device.type == "cuda"
        self.loader = DataLoader(_Rows(data, rows), sampler=self._sampler, batch_size=None, num_workers=workers,
                                 pin_memory=pin, persistent_workers=workers > 0,
                                 prefetch_factor=4 if workers > 0 else None)
        self._iter: Iterator[Any] | None = None
        self._non_blocking = pin

    def start(self, batches: list[Tensor]) -> None:
        self._sampler.batches = batches
        self._iter = iter(self.loader)

    def take(self) -> tuple[Tensor, Tensor]:
        assert self._iter is not None, "take() before start()"
        x, y = next(self._iter)
        return x.to(self.device, non_blocking=self._non_blocking), y.to(self.device, non_blocking=self._non_blocking)


def evaluation_view(data: TaskData, rows: np.ndarray, device: torch.device) -> tuple[TaskData, Tensor]:
    """(data, indices) for evaluating the rows ``rows`` repeatedly: in-memory data copies them to ``device``
    once (indices 0..len-1); file-backed data stays in its file and is read a chunk at a time."""
    rows_t = torch.as_tensor(np.asarray(rows))
    if is_file_backed(data):
        return data, rows_t
    view = TaskData(data.inputs[rows_t].to(device), data.targets[rows_t].to(device), data.task_names, data.meta)
    return view, torch.arange(len(rows_t), device=device)
