"""CIFAR-10's python-version folder (``cifar-10-batches-py``): five training batches ``data_batch_1..5``, the
``test_batch`` and ``batches.meta`` (``label_names``); its reader and the writer of the stand-in."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.datasets.shared.cifar_pickle import cifar_batch, dump_pickle, read_pickled_cifar
from pipeline.datasets.shared.image_classification import PIXELS, RawFormat
from pipeline.datasets.shared.raw_images import RawImages

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
EXPECTED = "data_batch_1..5, test_batch and batches.meta of cifar-10-batches-py"


def read_cifar10(root: Path) -> RawImages:
    return read_pickled_cifar(root, TRAIN_FILES, [TEST_FILE], META_FILE, {"class": b"labels"},
                              {"class": b"label_names"})


def write_cifar10(root: Path, raw: RawImages) -> None:
    """CIFAR-10's python-version layout: five training batches, the test batch, batches.meta."""
    root.mkdir(parents=True, exist_ok=True)
    train = np.flatnonzero(raw.is_train)
    for i, rows in enumerate(np.array_split(train, len(TRAIN_FILES))):
        dump_pickle(root / TRAIN_FILES[i], cifar_batch(raw, rows, {"class": b"labels"},
                                                        f"training batch {i + 1} of 5"))
    dump_pickle(root / TEST_FILE, cifar_batch(raw, np.flatnonzero(~raw.is_train), {"class": b"labels"},
                                              "testing batch 1 of 1"))
    dump_pickle(root / META_FILE, {b"label_names": [n.encode() for n in raw.names["class"]],
                                   b"num_cases_per_batch": int(np.ceil(len(train) / len(TRAIN_FILES))),
                                   b"num_vis": PIXELS})


CIFAR10_FORMAT = RawFormat(read_cifar10, write_cifar10, ("class",), "CIFAR-10", EXPECTED)
