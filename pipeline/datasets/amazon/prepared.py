"""The prepared Amazon folder: ``data.npz`` (one row per review, in time order), ``meta.json`` and ``vocab.json``.

- chronological periods: reviews sorted by ``unixReviewTime`` (ties in file order), the first ``train_fraction``
  the training period (0), the next ``val_fraction`` validation (1), the rest test (2) ([A §4.3]: 0.8/0.1/0.1);
- vocabularies from the **training period only**: a user, item or category gets an id 1.. in order of first
  appearance there; one first seen later (and an item without metadata's category) is 0, the out-of-vocabulary
  id, whose embedding is zero and never trained: a new user or item is predicted from the other fields, as a
  deployed recommender would have to (vocabularies over all periods would give val/test ids embeddings that
  training never moved);
- the CTR auxiliary: rating > ``ctr_threshold``, each label flipped with probability ``ctr_flip``.

Arrays: ``user``, ``item``, ``category`` int64 [N]; ``rating``, ``ctr`` float32 [N]; ``time`` int64 [N];
``period`` int8 [N].
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.io import save_npz, write_json
from pipeline.datasets.amazon.config import Config
from pipeline.datasets.amazon.sources import ReviewLog
from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.npz import read_prepared

FIELDS = ("user", "item", "category")
ARRAYS = (*FIELDS, "rating", "ctr", "time", "period")
PERIODS = ("train", "val", "test")
OOV = 0


def _encode(values: list[Any], train_rows: int) -> tuple[np.ndarray, list[Any]]:
    """Ids 1.. by first appearance among the first ``train_rows`` values, ``OOV`` for the rest and for None."""
    vocab: dict[Any, int] = {}
    for v in values[:train_rows]:
        if v is not None and v not in vocab:
            vocab[v] = len(vocab) + 1
    codes = np.fromiter((vocab.get(v, OOV) if v is not None else OOV for v in values), np.int64, len(values))
    return codes, list(vocab)


def build_arrays(log: ReviewLog, cfg: Config) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, list]]:
    """(arrays, meta, vocabularies) of a review log."""
    n = len(log.users)
    order = np.argsort(np.asarray(log.times, dtype=np.int64), kind="stable")
    n_train = int(round(cfg.train_fraction * n))
    n_val = int(round(cfg.val_fraction * n))
    if min(n_train, n_val, n - n_train - n_val) < 1:
        raise DataError(f"{n} reviews cannot be split {cfg.train_fraction}/{cfg.val_fraction}/rest with at least "
                        "one review per period (datasets.amazon.prepare.train_fraction, val_fraction)")
    period = np.full(n, 2, np.int8)
    period[:n_train], period[n_train:n_train + n_val] = 0, 1
    users = [log.users[i] for i in order]
    items = [log.items[i] for i in order]
    cats = [log.categories.get(a) for a in items]
    codes, vocabs = {}, {}
    for name, values in zip(FIELDS, (users, items, cats)):
        codes[name], vocabs[name] = _encode(values, n_train)
    rating = np.asarray(log.ratings, dtype=np.float32)[order]
    ctr = (rating > cfg.ctr_threshold).astype(np.float32)
    if cfg.ctr_flip > 0:
        flip = np.random.default_rng(cfg.ctr_flip_seed).random(n) < cfg.ctr_flip
        ctr = np.where(flip, 1 - ctr, ctr).astype(np.float32)
    arrays = {**codes, "rating": rating, "ctr": ctr, "time": np.asarray(log.times, dtype=np.int64)[order],
              "period": period}
    meta = {
        "task_names": ["rating", "ctr"],
        "subset": cfg.subset,
        "files": list(log.files),
        "vocab_sizes": [len(vocabs[f]) + 1 for f in FIELDS],  # + the OOV id 0
        "period_sizes": [int((period == k).sum()) for k in range(3)],
        "train_rating_mean": float(rating[:n_train].mean()),
        "oov_share": {PERIODS[k]: {f: float((codes[f][period == k] == OOV).mean()) for f in FIELDS} for k in (1, 2)},
        "ctr_threshold": cfg.ctr_threshold,
        "ctr_flip": cfg.ctr_flip,
    }
    return arrays, meta, vocabs


def write_prepared(folder: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], vocabs: dict[str, list]) -> None:
    save_npz(folder / "data.npz", **arrays)
    write_json(folder / "meta.json", meta)
    write_json(folder / "vocab.json", vocabs)


def load_prepared(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and meta of a prepared folder, checked; a ``DataError`` names the file."""
    arrays, meta, data_file, meta_file = read_prepared(folder, "amazon")
    missing = [k for k in ARRAYS if k not in arrays]
    sizes = meta.get("vocab_sizes")
    if missing or not (isinstance(sizes, list) and len(sizes) == len(FIELDS)):
        raise DataError(f"{data_file} or {meta_file}: expected arrays {ARRAYS} and 3 vocab_sizes, missing "
                        f"{missing or 'vocab_sizes'}")
    n = len(arrays["rating"])
    if any(arrays[k].shape != (n,) for k in ARRAYS):
        raise DataError(f"{data_file}: every array must have shape [N], got "
                        f"{ {k: arrays[k].shape for k in ARRAYS} }")
    for f, size in zip(FIELDS, sizes):
        if n and (arrays[f].min() < 0 or arrays[f].max() >= size):
            raise DataError(f"{data_file}: {f} ids must lie in [0, {size}) (meta.json's vocab_sizes)")
    if not set(np.unique(arrays["period"]).tolist()) <= {0, 1, 2}:
        raise DataError(f"{data_file}: period must be 0 (train), 1 (val) or 2 (test)")
    return arrays, meta
