"""The prepared file of the image-classification family (CIFAR-10, CIFAR-100, SVHN at 32 x 32; Oxford-IIIT Pet and
Stanford Cars at their ``image_size``; MNIST at 28 x 28 grayscale; STL-10 at 96 x 96): write, read and validate
``images.h5``.

Contents: images uint8 [N, C, S, S] (C = 3 RGB planes, or 1 for grayscale), labels int64 [N] (the main label),
is_train uint8 [N] (official split), class_names, the other labellings of the source (CIFAR-100:
fine_labels/fine_names and coarse_labels/coarse_names and MAXL's group and domain levels), subclass_labels when
known (the stand-in), and the attributes source, main_label, auxiliary_label (the finer labelling a method may
read, "" for none), image_size and mean/std (C per-channel statistics of the official training images in [0, 1],
with which the networks standardise their input).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from pipeline.datasets.shared.base import DataError, TaskData
from pipeline.datasets.shared.h5 import TEXT, file_attrs, open_prepared, put, text
from pipeline.datasets.shared.raw_images import RawImages
from pipeline.datasets.shared.rows import H5Rows
from pipeline.datasets.shared.standin_shapes import IMAGE_SIZE


H5_NAME = "images.h5"
CHANNELS = (1, 3)  # grayscale (MNIST) or RGB planes


def write_prepared(raw: RawImages, main: str, out_file: Path, source: str, auxiliary: str | None = None) -> None:
    """The prepared HDF5 file; ``main`` is the labelling that becomes the main task, ``auxiliary`` the finer
    human-defined labelling methods such as ``human`` read (None: none)."""
    mean, std = _channel_statistics(raw.images[raw.is_train])
    with h5py.File(out_file, "w") as f:
        put(f, "images", raw.images, np.uint8)
        put(f, "labels", raw.labels[main], np.int64)
        put(f, "class_names", raw.names[main], TEXT)
        put(f, "is_train", raw.is_train.astype(np.uint8), np.uint8)
        if len(raw.labels) > 1:  # every labelling of the source (CIFAR-100: fine and coarse)
            for key in raw.labels:
                put(f, f"{key}_labels", raw.labels[key], np.int64)
                put(f, f"{key}_names", raw.names[key], TEXT)
        if raw.subclass_labels is not None:
            put(f, "subclass_labels", raw.subclass_labels, np.int64)
        f.attrs["mean"] = mean
        f.attrs["std"] = std
        f.attrs["source"] = source
        f.attrs["main_label"] = main
        f.attrs["auxiliary_label"] = auxiliary or ""
        f.attrs["image_size"] = int(raw.images.shape[-1])


def _channel_statistics(images: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images [n, C, S, S] as [0, 1] pixels, summed in chunks (a float64
    copy of 256-px Cars would take 13 GB)."""
    channels = images.shape[1]
    total, total_sq, pixels = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(images), chunk):
        px = images[start:start + chunk].astype(np.float64) / 255.0
        total += px.sum(axis=(0, 2, 3))
        total_sq += (px * px).sum(axis=(0, 2, 3))
        pixels += px.shape[0] * px.shape[2] * px.shape[3]
    mean = total / max(pixels, 1)
    return mean, np.sqrt(np.maximum(total_sq / max(pixels, 1) - mean**2, 1e-12))


def read_prepared(path: Path, name: str, lazy: bool = False) -> TaskData:
    """``images.h5`` of dataset ``name`` as TaskData (uint8 images, the main label as the one target column, and
    ``meta``); a missing or malformed file is a DataError naming it. ``lazy``: the images stay in the file
    (``H5Rows``, read on demand)."""
    with open_prepared(path, "prepare") as f:
        absent = [k for k in ("images", "labels", "is_train", "class_names") if k not in f]
        absent += [k for k in ("mean", "std") if k not in f.attrs]
        if absent:
            raise DataError(f"{path}: missing {', '.join(absent)}")
        stored = f["images"]
        shape, dtype = stored.shape, stored.dtype  # checked below, whether or not the images are read
        images = None if lazy else stored[...]
        labels, is_train = f["labels"][...], f["is_train"][...].astype(bool)
        class_names = text(f["class_names"][...])
        extra = {k: f[k][...] for k in f if k.endswith("_labels") or k.endswith("_names")}
        attrs = file_attrs(f)
    mean, std = np.asarray(attrs["mean"], dtype=np.float64), np.asarray(attrs["std"], dtype=np.float64)
    n, c = (shape[0] if shape else 0), len(class_names)
    size = int(attrs.get("image_size", IMAGE_SIZE))
    channels = int(shape[1]) if len(shape) > 1 and shape[1] in CHANNELS else 3
    problems = []
    if tuple(shape[1:]) != (channels, size, size) or dtype != np.uint8:
        problems.append(f"images should be uint8 [N, C, {size}, {size}] with C = 1 or 3 (the image_size "
                        f"attribute), got {dtype} {shape}")
    if labels.shape != (n,) or is_train.shape != (n,):
        problems.append(f"labels {labels.shape} and is_train {is_train.shape} do not match {n} images")
    elif n and (labels.min() < 0 or labels.max() >= c):
        problems.append(f"labels must lie in [0, {c})")
    for key, value in extra.items():
        if key.endswith("_labels") and value.shape != (n,):
            problems.append(f"{key} has shape {value.shape}, expected ({n},)")
    if mean.shape != (channels,) or std.shape != (channels,) or not (std > 0).all():
        problems.append(f"mean/std attributes must be {channels} per-channel values with std > 0")
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems))

    meta: dict[str, Any] = {
        "source": attrs.get("source", ""),
        "main_label": attrs.get("main_label", ""),
        "auxiliary_label": attrs.get("auxiliary_label", ""),
        "num_classes": c,
        "class_names": class_names,
        "is_train": is_train,
        "image_size": size,
        "channels": channels,
        "mean": mean.tolist(),
        "std": std.tolist(),
    }
    for key, value in sorted(extra.items()):
        meta[key] = value.astype(np.int64) if key.endswith("_labels") else text(value)
    if "subclass_labels" in meta:
        meta["num_subclasses"] = int(meta["subclass_labels"].max()) + 1 if n else 0
    targets = torch.from_numpy(labels.astype(np.float32))[:, None]
    inputs = H5Rows(path, ("images",)) if lazy else torch.from_numpy(images)
    return TaskData(inputs, targets, ["class"], meta)
