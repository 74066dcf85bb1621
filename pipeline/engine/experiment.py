"""Loading what the earlier stages wrote, with checks that they belong together."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.datasets.shared.base import Dataset, TaskData
from pipeline.core.registry import DATASETS
from pipeline.core.io import sha256_file, torch_load, verify_manifest
from pipeline.core.paths import SPLITS, prepared_dir, seed_dir
from pipeline.datasets.shared.splits import load_splits
from pipeline.datasets.shared.loading import load_data
from pipeline.methods.base import build_method


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
    data = load_data(dataset, folder, params.data_loading, params.stream_above_mb)
    return Experiment(dataset, data, load_splits(SPLITS, num_samples=len(data)))


@dataclass
class TrainedRun:
    seed: int
    model: Any
    method_initial: Any
    method_final: Any
    history: dict[str, list]


def _read(path: Path, what: str, reader: Callable[[], Any]) -> Any:
    """``reader()``, with any failure (truncated, hand-edited, wrong content) reported naming the file."""
    try:
        return reader()
    except Exception as err:  # noqa: BLE001 - torch, pickle, zip and json each raise their own kinds
        detail = " ".join(str(err).split())
        detail = detail if len(detail) <= 200 else detail[:199] + "…"
        raise ValueError(f"{path} is not a readable {what} ({type(err).__name__}: {detail}); it may be truncated "
                         "or hand-edited: run `dvc repro train`") from None


def _history(path: Path) -> dict[str, list]:
    history = json.loads(path.read_text())
    if not isinstance(history, dict) or not isinstance(history.get("step"), list):
        raise ValueError("expected a JSON object with a list 'step'")
    return history


def _method_states(path: Path) -> dict[str, Any]:
    states = torch_load(path)
    if not isinstance(states, dict) or not {"initial", "final"} <= set(states):
        raise ValueError("expected a dict with the method's 'initial' and 'final' states")
    return states


def load_run(exp: Experiment, params: Any, seed: int) -> TrainedRun:
    """One seed's checkpoints and history; a missing, truncated or mismatched file raises naming the file."""
    folder = seed_dir(seed)
    model_file, method_file, history_file = folder / "model.pt", folder / "method.pt", folder / "history.json"
    for path in (model_file, method_file, history_file):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `dvc repro train`")
    states = _read(method_file, "method checkpoint", lambda: _method_states(method_file))
    model_state = _read(model_file, "model checkpoint", lambda: torch_load(model_file))
    history = _read(history_file, "training history", lambda: _history(history_file))
    method_final = build_method(params.method, exp.data.num_tasks, params, exp.dataset, exp.data)
    method_initial = build_method(params.method, exp.data.num_tasks, params, exp.dataset, exp.data)
    for method, key in ((method_final, "final"), (method_initial, "initial")):
        _read(method_file, f"checkpoint of method {params.method}", lambda m=method, k=key: m.load_state_dict(states[k]))
    model = exp.dataset.build_model(exp.data, params.profile.model, aux_outputs=method_final.head_outputs())
    _read(model_file, f"model checkpoint for {params.dataset}", lambda: model.load_state_dict(model_state))
    return TrainedRun(seed=seed, model=model.eval(), method_initial=method_initial, method_final=method_final,
                      history=history)
