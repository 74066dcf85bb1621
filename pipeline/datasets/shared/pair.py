"""Dataset pairs: DTG-AuxL's different-input scenario (appendix §4.4-4.5), a primary dataset whose auxiliary task
is another dataset's classification (CIFAR-10 with CIFAR-100, Oxford-IIIT Pet with CUB).

A pair is a registered dataset of its own (``pipeline/datasets/<primary>_<auxiliary>/``: ``DatasetPair`` mixed
into the primary's class, so the model, the augmentation, the metrics and the train/model defaults are the
primary's):

* **prepare**: each member is prepared by its own dataset code into ``primary/`` and ``auxiliary/`` of the pair's
  folder, from ``prepare.primary`` and ``prepare.auxiliary`` (each member's own ``prepare`` section; their raw
  folders default to ``data/raw/<pair>/primary`` and ``.../auxiliary``, inside the folder dvc.yaml tracks);
  ``pair.json`` records the pair's own settings (the auxiliary labels: given, or shuffled for an unhelpful
  auxiliary).
* **load**: one ``TaskData``: the primary's rows, then the auxiliary dataset's rows, its images resized to the
  primary's size (bilinear, antialiased; the network sees one size); targets [N, 2]: the primary label (−1 on
  auxiliary rows), the auxiliary label (−1 on primary rows). The losses are masked per column and normalised
  to each dataset's batch mean (``masked_cross_entropy``).
* **split**: the primary's own split of its rows (train/aux/val/test); the auxiliary dataset's official training
  images (a seeded ``split.auxiliary_fraction`` of them) form the ``companion`` split, the only rows of the
  auxiliary stream: never a primary row, never the auxiliary dataset's official test images.
* **training** (``pipeline.engine.training``): for methods that use given auxiliaries, each lower step takes one
  batch of the primary's training rows and one of ``companion`` (``train.batch_size`` each, its own seeded stream
  and augmentation) and runs them as one batch, primary rows first (``Batch.companion`` counts the others).
  DTG-AuxL pairs primary row i with auxiliary row i of that batch (instead of a shuffle). Methods without given
  auxiliaries (``stl``) see the primary's batches only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, create_model

from pipeline.core.io import atomic_path
from pipeline.core.schema import StrictModel
from pipeline.datasets.shared.base import DataError, Dataset, TaskData
from pipeline.datasets.shared.sources import default_root

PAIR_FILE = "pair.json"
MEMBERS = ("primary", "auxiliary")
UNKNOWN = -1.0  # a row's label of the other dataset's task
RESIZE_CHUNK = 512


def member_config(base: type[BaseModel], pair: str, role: str, **defaults: Any) -> type[BaseModel]:
    """``base`` (a member's ``prepare`` schema) with ``root`` defaulting to ``data/raw/<pair>/<role>`` and the
    given defaults (e.g. a stand-in seed of its own, so the two stand-ins are not the same images)."""
    fields: dict[str, Any] = {}
    for key, value in {"root": f"{default_root(pair)}/{role}", **defaults}.items():
        if key not in base.model_fields:
            raise ValueError(f"{base.__name__} has no field {key!r}")
        info = base.model_fields[key]
        fields[key] = (info.annotation, Field(value, description=info.description))
    return create_model(f"{base.__name__}_{pair}_{role}", __base__=base, **fields)


def pair_config(pair: str, primary: type[Dataset], auxiliary: type[Dataset],
                auxiliary_defaults: dict[str, Any] | None = None) -> type[StrictModel]:
    """``datasets.<pair>.prepare``: each member's own ``prepare`` section, and the auxiliary labels' role."""
    p_cfg = member_config(primary.Config, pair, "primary")
    a_cfg = member_config(auxiliary.Config, pair, "auxiliary", **(auxiliary_defaults or {}))
    return create_model(
        f"PairConfig_{pair}", __base__=StrictModel,
        primary=(p_cfg, Field(default_factory=p_cfg, description=f"the primary dataset's ({primary.name}) prepare")),
        auxiliary=(a_cfg, Field(default_factory=a_cfg,
                                description=f"the auxiliary dataset's ({auxiliary.name}) prepare")),
        auxiliary_labels=(str, Field("given", pattern="^(given|shuffled)$", description=(
            "given: the auxiliary dataset's labels; shuffled: permuted over its images (seeded by shuffle_seed), so "
            "the auxiliary task carries nothing about the images: the deliberately unhelpful auxiliary"))),
        shuffle_seed=(int, Field(0, description="auxiliary_labels: shuffled: the permutation's seed")))


def pair_split_config(primary: type[Dataset]) -> type[BaseModel]:
    """``datasets.<pair>.split``: the primary's split section plus the auxiliary stream's share."""
    return create_model(
        f"PairSplitConfig_{primary.name}", __base__=primary.SplitConfig,
        auxiliary_fraction=(float, Field(1.0, gt=0, le=1, description=(
            "share of the auxiliary dataset's official training images in the auxiliary stream (seeded by seed); "
            "its official test images are never used"))))


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, 3, h, w] -> uint8 [N, 3, size, size] (bilinear, antialiased, rounded); unchanged at that size."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = [F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
           .round().clamp(0, 255).to(torch.uint8) for part in images.split(RESIZE_CHUNK)]
    return torch.cat(out) if out else images.new_zeros((0, 3, size, size))


class DatasetPair:
    """Mixed in before the primary's dataset class: ``primary_dataset`` and ``auxiliary_dataset`` are the
    members' registered classes. See the module's docstring."""

    primary_dataset: ClassVar[type[Dataset]]
    auxiliary_dataset: ClassVar[type[Dataset]]
    provides = frozenset({"auxiliaries", "task_labels"})
    open_rows = Dataset.open_rows  # in memory only (the members' files are read and joined at load)

    def _members(self) -> tuple[Dataset, Dataset]:
        return self.primary_dataset(), self.auxiliary_dataset()

    def prepare(self, cfg: Any, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        for member, role in zip(self._members(), MEMBERS):
            (out_dir / role).mkdir(parents=True, exist_ok=True)
            member.prepare(getattr(cfg, role), out_dir / role)
        with atomic_path(out_dir / PAIR_FILE) as tmp:
            Path(tmp).write_text(json.dumps({"primary": self.primary_dataset.name,
                                             "auxiliary": self.auxiliary_dataset.name,
                                             "auxiliary_labels": cfg.auxiliary_labels,
                                             "shuffle_seed": cfg.shuffle_seed}, indent=1) + "\n")

    def load(self, folder: Path) -> TaskData:
        folder = Path(folder)
        path = folder / PAIR_FILE
        if not path.is_file():
            raise DataError(f"{path} is missing: run `dvc repro prepare`")
        try:
            settings = json.loads(path.read_text())
            shuffled, seed = settings["auxiliary_labels"] == "shuffled", int(settings["shuffle_seed"])
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}: malformed ({err})") from None
        primary, auxiliary = (m.load(folder / role) for m, role in zip(self._members(), MEMBERS))
        for data, role in ((primary, "primary"), (auxiliary, "auxiliary")):
            for key in ("num_classes", "is_train"):
                if key not in data.meta:
                    raise DataError(f"{folder / role}: the prepared {role} dataset has no {key}")
        size = int(primary.inputs.shape[-1])
        aux_images = resize_images(auxiliary.inputs, size)
        aux_labels = auxiliary.targets[:, 0].clone()
        if shuffled:
            aux_labels = aux_labels[torch.from_numpy(np.random.default_rng(seed).permutation(len(aux_labels)))]
        n_p, n_a = len(primary), len(auxiliary)
        targets = torch.full((n_p + n_a, 2), UNKNOWN)
        targets[:n_p, 0] = primary.targets[:, 0]
        targets[n_p:, 1] = aux_labels
        meta = dict(primary.meta)
        meta.update(pair_rows=n_p, given_classes=[int(auxiliary.meta["num_classes"])],
                    auxiliary_is_train=np.asarray(auxiliary.meta["is_train"], bool),
                    auxiliary_source=auxiliary.meta.get("source", ""), auxiliary_labels=settings["auxiliary_labels"])
        return TaskData(torch.cat([primary.inputs, aux_images]), targets,
                        [primary.task_names[0], self.auxiliary_dataset.name], meta)

    def make_splits(self, data: TaskData, split_cfg: Any) -> dict[str, np.ndarray]:
        """The primary's splits of its rows; ``companion``: the auxiliary stream's rows (see the module)."""
        n_p = int(data.meta["pair_rows"])
        view = TaskData(data.inputs[:n_p], data.targets[:n_p, :1], data.task_names[:1], data.meta)
        splits = super().make_splits(view, split_cfg)  # the primary's own split
        pool = n_p + np.flatnonzero(data.meta["auxiliary_is_train"])
        count = max(1, int(round(split_cfg.auxiliary_fraction * len(pool))))
        companion = np.random.default_rng([split_cfg.seed, 1]).permutation(pool)[:count]
        return {**splits, "companion": np.sort(companion).astype(np.int64)}

    def label_groups(self, data: TaskData) -> int:
        raise ValueError(f"dataset {self.name} does not support generated auxiliary tasks (its auxiliary is a dataset)")
