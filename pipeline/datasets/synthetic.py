"""The AuxiLearn paper's synthetic regression problems (§5.1 and App. C.3).

Both write ``data.npz`` (``x`` [N, d] float32, ``y`` [N, 1+K] float32, column 0 the main task) and
``meta.json`` (the true weights and the task names). A shared linear model w ∈ R^d fits every task.

Generated data knows what each auxiliary is: ``meta.json`` of ``toy2d`` holds ``aux_roles``
(``{"helpful": "helpful", "harmful": "harmful"}``, the convention of every stand-in: a role per auxiliary
task, "helpful" | "irrelevant" | "harmful"), which ``load`` returns in ``TaskData.meta["aux_roles"]``.
``noisy_aux`` has none: its auxiliaries are graded by noise (``auxiliary_order``), not sorted into roles.
"""
from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from pipeline.schema import StrictModel
from pipeline.registry import DATASETS
from pipeline.datasets.base import DataError, Dataset, TaskData
from pipeline.io import load_npz, save_npz, write_json
from pipeline.registry import MODELS
from pipeline.models.base import MultiTaskNet


class SyntheticRegression(Dataset):
    """Shared machinery: files, squared-error losses, the shared linear model, and MSE metrics."""

    @abstractmethod
    def generate(self, cfg: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Return inputs [N, d], targets [N, 1+K] and metadata (must hold ``task_names`` and ``w_main``)."""

    def prepare(self, cfg: Any, out_dir: Path) -> None:
        x, y, meta = self.generate(cfg, np.random.default_rng(cfg.seed))
        save_npz(out_dir / "data.npz", x=x.astype(np.float32), y=y.astype(np.float32))
        write_json(out_dir / "meta.json", meta)

    def load(self, folder: Path) -> TaskData:
        data_file, meta_file = folder / "data.npz", folder / "meta.json"
        for f in (data_file, meta_file):
            if not f.is_file():
                raise DataError(f"{f} is missing: run `dvc repro prepare@{self.name}`")
        try:
            arrays = load_npz(data_file)
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{data_file} or {meta_file} is not readable: {err}") from None
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
        with torch.no_grad():
            pred = model(data.inputs[indices])
            mse = float(((pred - data.targets[indices, 0]) ** 2).mean())
            w = torch.cat([p.detach().flatten() for p in model.parameters()])
            w_err = float(torch.linalg.vector_norm(w - torch.tensor(data.meta["w_main"], dtype=w.dtype)))
        return {"main_mse": mse, "weight_error": w_err}


class Toy2DConfig(StrictModel):
    seed: int = 0
    num_samples: int = Field(1300, ge=4)
    w_main: tuple[float, float] = (1.0, 1.0)
    w_harmful: tuple[float, float] = (2.0, -4.0)
    sigma_main: float = Field(3.0, gt=0, description="must exceed sigma_aux (paper §5.1)")
    sigma_aux: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _main_noisier(self) -> "Toy2DConfig":
        if self.sigma_main <= self.sigma_aux:
            raise ValueError("sigma_main must be larger than sigma_aux (paper §5.1)")
        return self


@DATASETS.register("toy2d")
class Toy2D(SyntheticRegression):
    """y_main = w*ᵀx + ε0, helpful y1 = w*ᵀx + ε1, harmful y2 = w̃ᵀx + ε2, σ_main > σ_aux (§5.1)."""

    name = "toy2d"
    Config = Toy2DConfig
    default_split = {"aux": 100, "val": 100, "test": 1000}
    default_train = {"steps": 2000, "lr": 0.01}

    def generate(self, cfg: Toy2DConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        n = cfg.num_samples
        x = rng.normal(size=(n, 2))
        w_main, w_harm = np.asarray(cfg.w_main), np.asarray(cfg.w_harmful)
        y = np.stack(
            [
                x @ w_main + rng.normal(0, cfg.sigma_main, n),
                x @ w_main + rng.normal(0, cfg.sigma_aux, n),
                x @ w_harm + rng.normal(0, cfg.sigma_aux, n),
            ],
            axis=1,
        )
        meta = {"task_names": ["main", "helpful", "harmful"], "w_main": w_main.tolist(), "w_harmful": w_harm.tolist(),
                "aux_roles": {"helpful": "helpful", "harmful": "harmful"}}
        return x, y, meta


class NoisyAuxConfig(StrictModel):
    seed: int = 0
    num_samples: int = Field(1300, ge=4)
    dim: int = Field(10, ge=1)
    num_aux: int = Field(100, ge=1)
    input_mean: float = Field(1.0, description="mean of every input feature; non-zero makes |ε| a bias the model feels")
    sigma_main: float = Field(1.0, gt=0)
    sigma_aux: float = Field(0.3, gt=0, description="ε_j ~ N(0, j·sigma_aux²)")


@DATASETS.register("noisy_aux")
class NoisyAux(SyntheticRegression):
    """K auxiliaries y_j = wᵀx + |ε_j|, ε_j ~ N(0, j·σ²_aux): noise grows with the task index (App. C.3)."""

    name = "noisy_aux"
    Config = NoisyAuxConfig
    default_split = {"aux": 100, "val": 100, "test": 1000}
    default_train = {"steps": 2000, "lr": 0.01, "aux_loss_scale": 0.01}  # τ = 1/K keeps Σ aux ≈ main
    auxiliary_order = "label noise grows with the index"
    # φ chosen on validation from lr ∈ {1e-3, 3e-3, 1e-2} × N = 5 (and weight decay 0.3): 400 hyper steps
    # let 100 auxiliaries sort themselves out (N = 20 leaves 100).
    default_methods = {"bilevel": {"hyper_every": 5}}

    def generate(self, cfg: NoisyAuxConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        n, d, k = cfg.num_samples, cfg.dim, cfg.num_aux
        w = rng.normal(size=d)
        x = rng.normal(cfg.input_mean, 1.0, size=(n, d))
        clean = x @ w
        stds = cfg.sigma_aux * np.sqrt(np.arange(1, k + 1))
        aux = clean[:, None] + np.abs(rng.normal(size=(n, k)) * stds)
        y = np.concatenate([(clean + rng.normal(0, cfg.sigma_main, n))[:, None], aux], axis=1)
        meta = {"task_names": ["main"] + [f"aux_{j}" for j in range(1, k + 1)], "w_main": w.tolist()}
        return x, y, meta
