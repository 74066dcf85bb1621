"""The raw images of an image-classification source (CIFAR-10/100, SVHN, their stand-ins), read into memory:
what the format readers return and the prepared-file writer takes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RawImages:
    """A source read into memory: official train rows first or mixed, as the files order them."""

    images: np.ndarray  # uint8 [N, 3, 32, 32], RGB planes
    is_train: np.ndarray  # bool [N]
    labels: dict[str, np.ndarray]  # labelling -> int64 [N] ("class"; CIFAR-100: "fine" and "coarse")
    names: dict[str, list[str]]  # labelling -> class names
    subclass_labels: np.ndarray | None = None  # int64 [N], the stand-in's hidden sub-class within its class
