"""The class hierarchy behind generated labels (MAXL §3.3, §4.3): ψ from a dataset's human-defined finer labelling,
the Human baseline's targets, and the Nearest Neighbour baseline's prototypes.

- ``balanced_psi``: MAXL's well-balanced hierarchy: ``total`` auxiliary classes shared out evenly over the groups,
  the remainder one each to randomly drawn groups ("we randomly choose which primary classes are assigned each
  number of auxiliary classes").
- ``human_hierarchy``: the human-defined tree: ψ[g] = the finer classes under main class g, and each finer class's
  place in its parent's block, so Human's one-hot targets live in the same blocked head (Mask SoftMax layout) as
  MAXL's and Random's.
- ``prototype_rows`` / ``prototype_logits``: Snell et al.'s prototypes (class means of embeddings) of a seeded,
  per-class ``fraction`` of the training images, and −‖e − c_k‖² as the logits of the soft assignment.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def balanced_psi(total: int, groups: int) -> list[int]:
    """``total`` classes over ``groups`` blocks, sizes differing by at most one; the larger blocks drawn with
    torch's global generator (the method's seeded stream)."""
    if total < groups:
        raise ValueError(f"ψ from the hierarchy: {total} finer classes cannot give each of {groups} groups one")
    base, extra = divmod(total, groups)
    psi = [base] * groups
    for g in torch.randperm(groups)[:extra].tolist() if extra else []:
        psi[g] += 1
    return psi


def finer_total(dataset: Any, data: Any) -> int | None:
    """The number of finer human-defined classes of a dataset that declares ``finer_labels`` and was prepared with
    one, else None."""
    if "finer_labels" not in getattr(dataset, "provides", frozenset()):
        return None
    try:
        return dataset.finer_labels(data)[1]
    except ValueError:
        return None


def resolve_psi(psi: int | list[int] | None, dataset: Any, data: Any, groups: int, fallback: int = 5) -> list[int]:
    """ψ per group: as given, or (None) balanced over the dataset's finer classes when it has them, else
    ``fallback`` for every group."""
    if psi is None:
        total = finer_total(dataset, data)
        return balanced_psi(total, groups) if total is not None else [fallback] * groups
    return psi if isinstance(psi, list) else [psi] * groups


def human_hierarchy(group_of_row: Tensor, finer_of_row: Tensor, groups: int, finer: int
                    ) -> tuple[list[int], Tensor]:
    """ψ[g] = the finer classes whose rows all lie in main class g, and for each finer class its index in the
    blocked auxiliary head (block of its parent, classes in id order; −1 for a class without rows).

    A finer class seen under two main classes is not a hierarchy: ValueError naming it."""
    parent = torch.full((finer,), -1, dtype=torch.long)
    pairs = torch.unique(torch.stack([finer_of_row.long(), group_of_row.long()], 1), dim=0)
    for f, g in pairs.tolist():
        if parent[f] >= 0 and parent[f] != g:
            raise ValueError(f"finer class {f} has rows under main classes {int(parent[f])} and {g}: the levels do "
                             "not form a hierarchy")
        parent[f] = g
    psi = [int((parent == g).sum()) for g in range(groups)]
    empty = [g for g, n in enumerate(psi) if n == 0]
    if empty:
        raise ValueError(f"main classes {empty[:5]} have no finer class in the data: no hierarchy block for them")
    starts = torch.tensor([0, *psi]).cumsum(0)[:-1]
    block_class = torch.full((finer,), -1, dtype=torch.long)
    for g in range(groups):
        members = torch.nonzero(parent == g).flatten()
        block_class[members] = starts[g] + torch.arange(len(members))
    return psi, block_class


def prototype_rows(finer_of_row: np.ndarray, train_rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of each finer class's training rows (at least one each), sorted: the images whose
    human-defined labels make the prototypes (MAXL §4.1: 10% of the training images)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(finer_of_row[train_rows]):
        rows = train_rows[finer_of_row[train_rows] == c]
        chosen.append(rng.choice(rows, size=max(1, int(round(fraction * len(rows)))), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def prototype_logits(embeddings: Tensor, proto_embeddings: Tensor, proto_class: Tensor, classes: int) -> Tensor:
    """[B, K] logits −‖e_b − c_k‖² of each embedding against the class means c_k of ``proto_embeddings`` [P, F]
    (class ``proto_class`` [P]); a class without prototype images gets the lowest finite value: never assigned
    while its block has another class, uniform where its block has none (−inf would give NaN there)."""
    sums = torch.zeros(classes, proto_embeddings.shape[1], dtype=proto_embeddings.dtype,
                       device=proto_embeddings.device).index_add(0, proto_class, proto_embeddings)
    counts = torch.zeros(classes, dtype=proto_embeddings.dtype, device=proto_embeddings.device).index_add(
        0, proto_class, torch.ones_like(proto_class, dtype=proto_embeddings.dtype))
    centres = sums / counts.clamp_min(1)[:, None]
    logits = -torch.cdist(embeddings, centres).pow(2)
    return logits.masked_fill(counts[None, :] == 0, torch.finfo(logits.dtype).min)


BACKBONE_PREFIXES = ("net.backbone.", "backbone.")  # a whole model.pt (Standardized(ImageClassifier)) or a classifier


def load_embedding_weights(backbone: nn.Module, path: str | Path, key: str) -> None:
    """Load a local state dict into ``backbone`` (``weights_only=True``: a checkpoint is data, never code).

    Accepts the backbone's own keys, or a whole network's (``model.pt``: keys under ``net.backbone.``; a classifier:
    ``backbone.``), with or without DDP's ``module.``; every backbone tensor must be there. Errors name ``key``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path} does not exist (the embedding network's weights are read from a "
                                "local file, never downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"{key}: {path} is not a tensor-only checkpoint: {err}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{key}: {path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for prefix in BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:300]
        raise ValueError(f"{key}: {path} is not a state dict of this backbone: {first}") from None
