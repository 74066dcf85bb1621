"""The AuxiLearn paper's synthetic regression problems (§5.1 and App. C.3), shared by ``toy2d`` and
``noisy_aux``: files, squared-error losses, the shared linear model and the MSE metrics.

Both write ``data.npz`` (``x`` [N, d] float32, ``y`` [N, 1+K] float32, column 0 the main task) and
``meta.json`` (the true weights and the task names). A shared linear model w ∈ R^d fits every task.
Generated data may say what each auxiliary is: ``meta["aux_roles"]`` (a role per auxiliary task, "helpful" |
"irrelevant" | "harmful", the convention of every stand-in), which ``load`` checks and returns in
``TaskData.meta``.
"""
from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.datasets.shared.base import DataError, Dataset, TaskData
from pipeline.core.io import save_npz, write_json
from pipeline.datasets.shared.npz import read_prepared
from pipeline.models.base import MultiTaskNet
from pipeline.core.registry import MODELS

ROOT_DESCRIPTION = ("unused: {name} is generated from these parameters (no raw files); kept so every prepare "
                    "stage has the same dependencies")


class SyntheticRegression(Dataset):
    """Shared machinery: files, squared-error losses, the shared linear model, and MSE metrics."""

    provides = frozenset({"auxiliaries"})

    @abstractmethod
    def generate(self, cfg: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Return inputs [N, d], targets [N, 1+K] and metadata (must hold ``task_names`` and ``w_main``)."""

    def prepare(self, cfg: Any, out_dir: Path) -> None:
        x, y, meta = self.generate(cfg, np.random.default_rng(cfg.seed))
        save_npz(out_dir / "data.npz", x=x.astype(np.float32), y=y.astype(np.float32))
        write_json(out_dir / "meta.json", meta)

    def load(self, folder: Path) -> TaskData:
        arrays, meta, data_file, meta_file = read_prepared(folder, self.name)
        x, y = arrays.get("x"), arrays.get("y")
        if x is None or y is None or x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            shapes = {k: v.shape for k, v in arrays.items()}
            raise DataError(f"{data_file}: expected arrays x [N, d] and y [N, tasks] of equal N, got {shapes}")
        names = meta.get("task_names", [])
        if len(names) != y.shape[1]:
            raise DataError(f"{meta_file}: {len(names)} task names for {y.shape[1]} target columns")
        roles = meta.get("aux_roles")
        if roles is not None and (not isinstance(roles, dict) or set(roles) != set(names[1:])
                                  or not set(roles.values()) <= {"helpful", "irrelevant", "harmful"}):
            raise DataError(f"{meta_file}: aux_roles must give each auxiliary task {names[1:]} a role "
                            f"(helpful, irrelevant or harmful)")
        return TaskData(torch.from_numpy(x), torch.from_numpy(y), list(names), meta)

    def build_model(self, data: TaskData, cfg: Any = None, aux_outputs: int = 0) -> MultiTaskNet:
        if aux_outputs:
            raise ValueError(f"{self.name}: generated auxiliary tasks are not supported")
        return MODELS.get("shared_linear")(in_features=data.inputs.shape[1])

    def per_task_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs.unsqueeze(1) - targets) ** 2

    def metrics(self, model: nn.Module, data: TaskData, indices: Tensor) -> dict[str, float]:
        """``main_mse``: the main task's test MSE; ``weight_error``: ‖w − w*‖ of the shared linear model."""
        with torch.no_grad():
            pred = model(data.inputs[indices])
            mse = float(((pred - data.targets[indices, 0]) ** 2).mean())
            w = torch.cat([p.detach().flatten() for p in model.parameters()])
            w_err = float(torch.linalg.vector_norm(w - torch.tensor(data.meta["w_main"], dtype=w.dtype)))
        return {"main_mse": mse, "weight_error": w_err}
