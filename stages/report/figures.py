"""Figures and the markdown report: learned task weights over training, and the paper's Figure 2 landscapes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from pipeline.engine.experiment import Experiment, TrainedRun  # noqa: E402
from pipeline.core.functional import call_with  # noqa: E402
from pipeline.core.io import atomic_path  # noqa: E402
from pipeline.methods.base import scale_losses  # noqa: E402
from pipeline.engine.training import task_scale  # noqa: E402


def mean_history(runs: Sequence[TrainedRun], key: str) -> np.ndarray:
    return np.mean([np.asarray(r.history[key], dtype=float) for r in runs], axis=0)


def save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


MIN_POINTS = 2  # a curve of one point draws nothing: such a figure is not written (the report says so)


def plot_weights(steps: np.ndarray, weights: np.ndarray, task_names: list[str], path: Path) -> bool:
    """Learned auxiliary weights over training steps (mean over seeds); many tasks are coloured by index.
    Returns False (and writes nothing) for a run too short to draw a curve."""
    if len(steps) < MIN_POINTS:
        return False
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
    return True


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
                losses = scale_losses(exp.dataset.per_task_losses(call_with(model, {name: w}, (x,)), y), scale)
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


def method_log_series(runs: Sequence[TrainedRun], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps and the seed-mean of a scalar the method logged (e.g. ``grad_cosine``), or None if never logged."""
    series = [[(e["step"], e[key]) for e in r.history.get("method_log", []) if key in e] for r in runs]
    if not series or not all(series) or len({len(s) for s in series}) != 1:
        return None
    steps = np.array([s for s, _ in series[0]], dtype=float)
    return steps, np.mean([[v for _, v in s] for s in series], axis=0)


def plot_series(curves: dict[str, tuple[np.ndarray, np.ndarray]], ylabel: str, title: str, path: Path,
                legend_outside: bool = False) -> bool:
    """One curve per label; False (nothing written) when no curve has two points. ``legend_outside``: the
    legend right of the axes (many curves would hide each other's ends under it)."""
    if not any(len(x) >= MIN_POINTS for x, _ in curves.values()):
        return False
    fig, ax = plt.subplots(figsize=(9.0 if legend_outside else 6.4, 3.6))
    styles = ["-", "--", ":", "-."]
    for i, (label, (x, y)) in enumerate(curves.items()):
        ax.plot(x, y, styles[i // 10 % len(styles)], label=label)  # past tab10's colours, a new dash style
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(curves) > 1:
        ax.legend(**({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": "small"} if legend_outside
                     else {}))
    save_figure(fig, path)
    return True


def generated_labels(exp: Experiment, run: TrainedRun, split: str = "test", chunk: int = 256
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft auxiliary labels of a split from a trained label method: (labels [N, K], groups [N], rows [N])."""
    from pipeline.methods.base import Batch

    method = run.method_final
    rows = torch.as_tensor(exp.splits[split])
    out, groups = [], []
    with torch.no_grad():
        for part in rows.split(chunk):
            x, y = exp.dataset.batch_transform(exp.data.inputs[part], exp.data.targets[part], train=False)
            soft = method.generator.soft_labels(Batch(x, y, part, torch.ones(len(part), dtype=torch.bool)), train_mode=False)
            out.append(soft.flatten(2).mean(2) if soft.dim() > 2 else soft)
            groups.append(exp.dataset.label_group(y))
    return torch.cat(out).numpy(), torch.cat(groups).numpy(), rows.numpy()


def embed_2d(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """t-SNE to 2-d (AuxiLearn Figure 4); PCA when scikit-learn is missing or there are too few points."""
    if len(vectors) > 5:
        try:
            from sklearn.manifold import TSNE

            perplexity = float(min(30, (len(vectors) - 1) / 3))
            return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(vectors), "t-SNE"
        except ImportError:
            pass
    centred = vectors - vectors.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1]))), "PCA"


def plot_soft_labels(soft: np.ndarray, groups: np.ndarray, mask: np.ndarray, group_names: list[str],
                     hidden: np.ndarray | None, path: Path, show: Sequence[int] = (0, 1)) -> dict[str, float]:
    """Figure 4: per main class, a 2-d embedding of its soft auxiliary labels (its own block of ψ classes),
    coloured by the hidden sub-class where the data has one (the stand-in does). Returns, per shown class,
    the normalised mutual information between the arg-max auxiliary class and the hidden sub-class."""
    from sklearn.metrics import normalized_mutual_info_score

    fig, axes = plt.subplots(1, len(show), figsize=(5 * len(show), 4.2), squeeze=False)
    nmi: dict[str, float] = {}
    for ax, g in zip(axes[0], show):
        members = groups == g
        block = soft[members][:, mask[g]]
        coords, how = embed_2d(block)
        colour = hidden[members] if hidden is not None else block.argmax(1)
        sc = ax.scatter(coords[:, 0], coords[:, 1], c=colour, cmap="tab10", s=12)
        ax.set_title(f"{group_names[g]}: {how} of its {block.shape[1]} soft labels")
        ax.legend(*sc.legend_elements(), title="hidden sub-class" if hidden is not None else "arg-max class",
                  fontsize=7, loc="best")
        if hidden is not None:
            nmi[group_names[g]] = float(normalized_mutual_info_score(hidden[members], block.argmax(1)))
    save_figure(fig, path)
    return nmi


def pixel_weights(method: Any, losses: torch.Tensor) -> torch.Tensor:
    """Σ_j ∂L_T/∂ℓ_j per pixel of loss images [B, T, H, W] -> [B, H, W], scaled by B·H·W so that
    plain averaging with weight w shows as w everywhere (AuxiLearn Figure 3e)."""
    with torch.enable_grad():
        x = losses.detach().requires_grad_(True)
        loss = method.training_loss(x if method.needs_loss_images else x.flatten(2).mean(2))
        (grad,) = torch.autograd.grad(loss, x)
    b, _, h, w = x.shape
    return grad.sum(1) * (b * h * w)


def loss_image_figure(exp: Experiment, run: TrainedRun, params: Any, path: Path, count: int = 3) -> None:
    """AuxiLearn Figure 3 for a few test images: image, ground truth, auxiliary loss image (the auxiliary
    channels summed), main loss image, and the adaptive pixel weight of the trained method."""
    rows = torch.as_tensor(exp.splits["test"][:count])
    scale = task_scale(exp.data.num_tasks, params.train.aux_loss_scale)
    with torch.no_grad():
        x, y = exp.dataset.batch_transform(exp.data.inputs[rows], exp.data.targets[rows], train=False)
        losses = scale_losses(exp.dataset.per_task_losses(run.model(x), y), scale)
    weights = pixel_weights(run.method_final, losses)
    titles = ["(a) image", "(b) ground truth", "(c) auxiliary loss", "(d) main loss", "(e) pixel weight"]
    fig, axes = plt.subplots(len(rows), 5, figsize=(15, 2.6 * len(rows)), squeeze=False)
    for i in range(len(rows)):
        rgb, label = exp.dataset.display(x[i], y[i])
        panels = [rgb, np.ma.masked_less(label, 0), losses[i, 1:].sum(0).numpy(), losses[i, 0].numpy(),
                  weights[i].numpy()]
        cmaps = [None, "tab20", "magma", "magma", "viridis"]
        for j, (ax, panel, cmap) in enumerate(zip(axes[i], panels, cmaps)):
            im = ax.imshow(panel, cmap=cmap, interpolation="nearest")
            if j >= 2:
                fig.colorbar(im, ax=ax, fraction=0.035)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j])
    fig.suptitle(f"loss images and pixel weights: {params.method}, seed {run.seed}")
    save_figure(fig, path)


def phi_movement(initial: dict[str, torch.Tensor], final: dict[str, torch.Tensor]) -> list[tuple[str, float, float]]:
    """How far each learned tensor of φ moved: (name, ‖φ_end − φ_start‖, ‖φ_start‖), floating tensors only."""
    out = []
    for name, start in initial.items():
        end = final.get(name)
        if end is None or not torch.is_floating_point(start) or start.shape != end.shape:
            continue
        if torch.equal(start, end):
            continue  # buffers and frozen parts
        out.append((name, float((end - start).norm()), float(start.norm())))
    return out


def outer_update_summary(runs: Sequence[TrainedRun]) -> dict[str, float] | None:
    """α·λ̂_max over training, how often the hypergradient clip bound and ``series_stop`` ended a series early,
    and the hyper-step count (None: no IFT outer update logged)."""
    logs = [e for r in runs for e in r.history.get("method_log", []) if "hypergrad_norm" in e]
    if not logs:
        return None
    products = [e["alpha_lambda"] for e in logs if "alpha_lambda" in e]
    summary = {"hyper_steps": len(logs) / len(runs), "clip_fraction": float(np.mean([e.get("clipped", 0.0) for e in logs])),
               "series_cut_fraction": float(np.mean([e.get("series_cut", 0.0) for e in logs]))}
    if products:
        summary.update(alpha_lambda_min=float(np.min(products)), alpha_lambda_median=float(np.median(products)),
                       alpha_lambda_max=float(np.max(products)),
                       alpha_lambda_over_2=float(np.mean(np.asarray(products) >= 2)))
    return summary


def role_ranking(final: np.ndarray, names: list[str], roles: dict[str, str]) -> tuple[dict[str, float], float | None]:
    """Mean final weight per documented role, and the AUC of weight for helpful vs harmful auxiliaries
    (1: every helpful auxiliary outweighs every harmful one; 0.5: no better than chance)."""
    mean = final.mean(0)
    by_role: dict[str, list[float]] = {}
    for j, name in enumerate(names):
        if name in roles:
            by_role.setdefault(roles[name], []).append(float(mean[j]))
    per_role = {role: float(np.mean(v)) for role, v in sorted(by_role.items())}
    good, bad = by_role.get("helpful", []), by_role.get("harmful", []) or by_role.get("irrelevant", [])
    if not good or not bad:
        return per_role, None
    wins = [(g > b) + 0.5 * (g == b) for g in good for b in bad]
    return per_role, float(np.mean(wins))


def seed_rankings(final: np.ndarray, names: list[str], roles: dict[str, str]) -> list[float | None]:
    """``role_ranking``'s AUC in each seed's own final weights (a row of ``final`` each)."""
    return [role_ranking(row[None], names, roles)[1] for row in final]
