"""Figures and the markdown report: learned task weights over training, and the paper's Figure 2 landscapes."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from torch.func import functional_call  # noqa: E402

from pipeline.experiment import Experiment, TrainedRun  # noqa: E402
from pipeline.io import atomic_path  # noqa: E402
from pipeline.training import task_scale  # noqa: E402


def mean_history(runs: Sequence[TrainedRun], key: str) -> np.ndarray:
    return np.mean([np.asarray(r.history[key], dtype=float) for r in runs], axis=0)


def write_csv(path: Path, header: list[str], rows: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows.tolist())


def save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_weights(steps: np.ndarray, weights: np.ndarray, task_names: list[str], path: Path) -> None:
    """Learned auxiliary weights over training steps (mean over seeds); many tasks are coloured by index."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    aux = weights[:, 1:]
    if aux.shape[1] <= 10:
        for j in range(aux.shape[1]):
            ax.plot(steps, aux[:, j], label=task_names[j + 1])
        ax.legend()
    else:
        cmap = plt.get_cmap("viridis")
        for j in range(aux.shape[1]):
            ax.plot(steps, aux[:, j], color=cmap(j / (aux.shape[1] - 1)), lw=0.7)
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(1, aux.shape[1]))
        fig.colorbar(sm, ax=ax, label="auxiliary task index")
    ax.set_xlabel("step")
    ax.set_ylabel("effective weight ∂L_T/∂ℓ_j")
    ax.set_title("learned auxiliary weights (mean over seeds)")
    save_figure(fig, path)


def plot_final_weights(final: np.ndarray, path: Path) -> float:
    """Final weight per auxiliary against its index (App. C.3, Figure 6); returns their Spearman correlation."""
    idx = np.arange(1, final.shape[1] + 1)
    rho = float(spearmanr(idx, final.mean(0)).statistic)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.errorbar(idx, final.mean(0), yerr=final.std(0) / np.sqrt(len(final)), fmt="o", ms=3)
    ax.set_xlabel("auxiliary task index")
    ax.set_ylabel("learned weight")
    ax.set_title(f"final auxiliary weights (Spearman ρ with the index = {rho:.2f})")
    save_figure(fig, path)
    return rho


def loss_landscapes(exp: Experiment, run: TrainedRun, params: Any, path: Path, grid: int = 61) -> None:
    """Figure 2: main-task loss and the learned training loss L_T at the first and last step, over w ∈ R²."""
    model = run.model
    (name, weight), = model.named_parameters()
    idx = torch.as_tensor(exp.splits["train"])
    x, y = exp.data.inputs[idx], exp.data.targets[idx]
    scale = task_scale(exp.data.num_tasks, params.train.aux_loss_scale)
    w_star = np.asarray(exp.data.meta["w_main"])
    span = np.linspace(-3, 5, grid)
    surfaces = {k: np.zeros((grid, grid)) for k in ("main", "first", "last")}
    with torch.no_grad():
        for i, a in enumerate(span):
            for j, b in enumerate(span):
                w = torch.tensor([a, b], dtype=weight.dtype)
                losses = exp.dataset.per_task_losses(functional_call(model, {name: w}, (x,)), y) * scale
                surfaces["main"][j, i] = float(losses[:, 0].mean())
                surfaces["first"][j, i] = float(run.method_initial.training_loss(losses))
                surfaces["last"][j, i] = float(run.method_final.training_loss(losses))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    titles = {"main": "(a) main task", "first": "(b) learned L_T, t = 0", "last": "(c) learned L_T, t = T"}
    for ax, (key, surf) in zip(axes, surfaces.items()):
        ax.contourf(span, span, np.log(surf), levels=30, cmap="Greys")
        iy, ix = np.unravel_index(np.argmin(surf), surf.shape)
        ax.plot(*w_star, "r*", ms=12, label="w*")
        ax.plot(span[ix], span[iy], "bo", ms=6, label="minimum")
        ax.set_title(titles[key])
        ax.set_xlabel("w₁")
    axes[0].set_ylabel("w₂")
    axes[0].legend(loc="lower left")
    fig.suptitle(f"loss landscapes on the training set ({params.method}, seed {run.seed}); darker is higher")
    save_figure(fig, path)
