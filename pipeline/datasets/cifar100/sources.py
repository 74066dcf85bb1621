"""CIFAR-100's python-version folder (``cifar-100-python``): ``train``, ``test`` (``fine_labels`` and
``coarse_labels``) and ``meta`` (``fine_label_names``, ``coarse_label_names``); its reader and the writer of the
stand-in."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.datasets.shared.cifar_pickle import cifar_batch, dump_pickle, read_pickled_cifar
from pipeline.datasets.shared.image_classification import RawFormat
from pipeline.datasets.shared.raw_images import RawImages

LABEL_KEYS = {"fine": b"fine_labels", "coarse": b"coarse_labels"}
NAME_KEYS = {"fine": b"fine_label_names", "coarse": b"coarse_label_names"}
EXPECTED = "train, test and meta of cifar-100-python"


def read_cifar100(root: Path) -> RawImages:
    return read_pickled_cifar(root, ["train"], ["test"], "meta", LABEL_KEYS, NAME_KEYS)


def write_cifar100(root: Path, raw: RawImages) -> None:
    """CIFAR-100's python-version layout: train, test, meta (fine and coarse labels)."""
    root.mkdir(parents=True, exist_ok=True)
    dump_pickle(root / "train", cifar_batch(raw, np.flatnonzero(raw.is_train), LABEL_KEYS, "training batch 1 of 1"))
    dump_pickle(root / "test", cifar_batch(raw, np.flatnonzero(~raw.is_train), LABEL_KEYS, "testing batch 1 of 1"))
    dump_pickle(root / "meta", {b"fine_label_names": [n.encode() for n in raw.names["fine"]],
                                b"coarse_label_names": [n.encode() for n in raw.names["coarse"]]})


CIFAR100_FORMAT = RawFormat(read_cifar100, write_cifar100, ("fine", "coarse"), "CIFAR-100", EXPECTED)
