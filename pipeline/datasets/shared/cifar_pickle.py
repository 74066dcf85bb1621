"""CIFAR's "python version" format, shared by CIFAR-10 and CIFAR-100: pickled dicts of ``data`` rows (uint8,
1024 red, 1024 green, 1024 blue values per image, each plane row-major) and label lists, read through a
restricted unpickler, and the writer the stand-in and the test fixtures use.

Safe loading: ``RestrictedUnpickler`` can rebuild plain numpy arrays (the only globals CIFAR's pickles name)
and the latin-1 ``bytes`` of Python 3 protocol-2 pickles, and nothing else.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.image_classification import IMAGE_SIZE, PIXELS, check_labels
from pipeline.datasets.shared.raw_images import RawImages
from pipeline.datasets.shared.h5 import text

try:  # numpy >= 2 names it numpy._core; numpy 1.x (and Python 2's CIFAR pickles) numpy.core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


# ----------------------------------------------------------------------------------------------
# Safe pickle reading
# ----------------------------------------------------------------------------------------------


def _latin1_encode(value: Any, encoding: str = "latin1") -> bytes:
    """What Python 3 protocol-2 pickles call to rebuild ``bytes`` (``_codecs.encode(s, "latin1")``), and only that."""
    if not isinstance(value, str) or encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed as encode(str, 'latin1'), got {encoding!r}")
    return value.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """Protocol-2 pickles write ``b""`` as a call of ``bytes()`` with no argument; nothing else is allowed."""
    if args:
        raise pickle.UnpicklingError("bytes(...) is only allowed without arguments")
    return b""


def _plain_ndarray(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for plain ``ndarray``s only (no subclasses)."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy.ndarray objects may be rebuilt")
    return _np_reconstruct(subtype, shape, dtype_code)


def _plain_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype`` for plain dtypes only: object dtypes would let a pickle hold arbitrary objects."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii")
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"dtype spec must be a string, got {type(spec).__name__}")
    dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"dtype {spec!r} is not a plain numeric dtype")
    return dtype


# (module, name) -> the safe stand-in the unpickler returns for that global. Python 2's CIFAR pickles
# name numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype; pickles written by Python 3
# with protocol 2 (like our fixtures and stand-in) also name _codecs.encode and (for b"") bytes.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _plain_ndarray,
    ("numpy._core.multiarray", "_reconstruct"): _plain_ndarray,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Loads builtin containers, str, bytes, numbers and plain numpy arrays; refuses every other global.

    ``find_class`` is the only way a pickle can reach code (functions to call, classes to build); it maps
    the few globals of ``ALLOWED_GLOBALS`` to checked stand-ins and raises ``DataError`` naming the file
    and the global for anything else, before the global is imported or called.
    """

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # Python 2 str -> bytes, as the CIFAR page prescribes
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(f"{self.path}: refusing to load the global {module}.{name} (only plain numpy arrays "
                            f"and builtin containers may appear in a CIFAR pickle)") from None


def load_pickle(path: Path) -> Any:
    """One CIFAR pickle through ``RestrictedUnpickler``; a missing or malformed file is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing")
    try:
        with open(path, "rb") as fh:
            return RestrictedUnpickler(fh, path).load()
    except DataError:
        raise
    except Exception as err:  # any malformation: truncated stream, bad opcode, refused dtype, ...
        raise DataError(f"{path} is not a readable CIFAR pickle: {type(err).__name__}: {err}") from None


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def _key(batch: dict, path: Path, key: bytes) -> Any:
    """``batch[key]``; pickles written by Python 3 without ``encoding`` may use str keys, so accept those too."""
    if key in batch:
        return batch[key]
    if key.decode() in batch:
        return batch[key.decode()]
    raise DataError(f"{path}: key {key.decode()!r} is missing (found {sorted(text(batch))[:8]})")


def read_cifar_batch(path: Path, label_keys: tuple[bytes, ...]) -> tuple[np.ndarray, dict[bytes, np.ndarray],
                                                                         np.ndarray | None]:
    """One CIFAR batch file: images uint8 [n, 3, 32, 32], each of ``label_keys`` as int64 [n], subclass labels."""
    batch = load_pickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data = np.asarray(_key(batch, path, b"data"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise DataError(f"{path}: data should be uint8 [n, {PIXELS}] (RGB planes of 32x32), got {data.dtype} "
                        f"{data.shape}")
    n = len(data)
    labels = {}
    for key in label_keys:
        values = _key(batch, path, key)
        try:
            arr = np.asarray(values, dtype=np.int64)
        except (TypeError, ValueError):
            raise DataError(f"{path}: {key.decode()} must be a list of integers") from None
        if arr.shape != (n,):
            raise DataError(f"{path}: {key.decode()} has shape {arr.shape}, expected ({n},) like data")
        labels[key] = arr
    sub = batch.get(b"subclass_labels", batch.get("subclass_labels"))
    subclass = None if sub is None else np.asarray(sub, dtype=np.int64)
    if subclass is not None and subclass.shape != (n,):
        raise DataError(f"{path}: subclass_labels has shape {subclass.shape}, expected ({n},)")
    # CIFAR rows: 1024 red, 1024 green, 1024 blue values, each plane row-major.
    return data.reshape(n, 3, IMAGE_SIZE, IMAGE_SIZE), labels, subclass


def read_pickled_cifar(root: Path, train_files: list[str], test_files: list[str], meta_file: str,
                       label_keys: dict[str, bytes], name_keys: dict[str, bytes]) -> RawImages:
    """A CIFAR python-version folder; ``label_keys``/``name_keys`` map our labelling names to the pickle keys."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (prepare.root must hold the CIFAR python-version files)")
    meta = load_pickle(root / meta_file)
    if not isinstance(meta, dict):
        raise DataError(f"{root / meta_file}: expected a pickled dict, got {type(meta).__name__}")
    names = {k: text(_key(meta, root / meta_file, key)) for k, key in name_keys.items()}
    images, labels, is_train, subclasses = [], {k: [] for k in label_keys}, [], []
    for files, train in ((train_files, True), (test_files, False)):
        for fname in files:
            imgs, labs, sub = read_cifar_batch(root / fname, tuple(label_keys.values()))
            images.append(imgs)
            for k, key in label_keys.items():
                labels[k].append(labs[key])
            is_train.append(np.full(len(imgs), train))
            subclasses.append(sub)
    known = [s for s in subclasses if s is not None]
    if known and len(known) != len(subclasses):
        raise DataError(f"{root}: subclass_labels appear in some batch files but not all")
    raw = RawImages(np.concatenate(images), np.concatenate(is_train),
                    {k: np.concatenate(v) for k, v in labels.items()}, names,
                    np.concatenate(known) if known else None)
    return check_labels(raw, root)


# ----------------------------------------------------------------------------------------------
# Writing (the stand-in, in CIFAR's real format)
# ----------------------------------------------------------------------------------------------


def dump_pickle(path: Path, obj: Any) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)  # the CIFAR files are protocol-2 pickles


def cifar_batch(raw: RawImages, rows: np.ndarray, label_keys: dict[str, bytes], batch_label: str) -> dict:
    """The pickled dict of one CIFAR batch file holding ``rows`` of ``raw``."""
    batch: dict[bytes, Any] = {b"batch_label": batch_label.encode()}
    for k, key in label_keys.items():
        batch[key] = raw.labels[k][rows].tolist()
    batch[b"data"] = raw.images[rows].reshape(len(rows), PIXELS)
    batch[b"filenames"] = [f"standin_{i:06d}.png".encode() for i in rows]
    if raw.subclass_labels is not None:
        batch[b"subclass_labels"] = raw.subclass_labels[rows].tolist()
    return batch
