"""Loading what the earlier stages wrote, with checks that they belong together."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.datasets.base import Dataset, TaskData
from pipeline.registry import DATASETS
from pipeline.io import sha256_file, torch_load, verify_manifest
from pipeline.paths import SPLITS, prepared_dir, seed_dir
from pipeline.splits import load_splits
from pipeline.training import load_method, load_model


@dataclass
class Experiment:
    dataset: Dataset
    data: TaskData
    splits: dict[str, np.ndarray]


def load_experiment(params: Any) -> Experiment:
    folder = prepared_dir(params.dataset)
    verify_manifest(folder)
    info_file = SPLITS / "info.json"
    if not info_file.is_file():
        raise FileNotFoundError(f"{info_file} is missing: run `dvc repro split`")
    info = json.loads(info_file.read_text())
    if info.get("dataset") != params.dataset or info.get("prepared_manifest_sha256") != sha256_file(
        folder / "manifest.json"
    ):
        raise ValueError(f"{SPLITS} was made for dataset {info.get('dataset')!r} or older data: run `dvc repro split`")
    dataset = DATASETS.get(params.dataset)(params.profile.model)
    return Experiment(dataset, dataset.load(folder), load_splits(SPLITS))


@dataclass
class TrainedRun:
    seed: int
    model: Any
    method_initial: Any
    method_final: Any
    history: dict[str, list]


def load_run(exp: Experiment, params: Any, seed: int) -> TrainedRun:
    folder = seed_dir(seed)
    for name in ("model.pt", "method.pt", "history.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing: run `dvc repro train`")
    method_states = torch_load(folder / "method.pt")
    method_final = load_method(params.method, exp.dataset, exp.data, params, method_states["final"])
    return TrainedRun(
        seed=seed,
        model=load_model(exp.dataset, exp.data, torch_load(folder / "model.pt"), params.profile.model,
                         aux_outputs=method_final.head_outputs()),
        method_initial=load_method(params.method, exp.dataset, exp.data, params, method_states["initial"]),
        method_final=method_final,
        history=json.loads((folder / "history.json").read_text()),
    )
