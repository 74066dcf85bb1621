"""DVC stage `report`: reports/report.md with the metrics table (the main metric first) and the paper-style
figures in reports/figures/ (written 0644). The curves `dvc plots` draws are train's live series
(reports/live/, ``pipeline.engine.live``), not written here."""
import json

import click
import numpy as np

from pipeline.config.stage import stage
from pipeline.engine.experiment import load_experiment, load_run
from pipeline.core.io import atomic_dir, write_text
from pipeline.metrics.summary import format_mean_sem, is_breakdown
from pipeline.core.paths import FIGURES, MODELS, PER_SEED, REPORT_MD, TIMINGS
from pipeline.datasets.shared.base import Dataset
from pipeline.methods.auxnets.polynomial import parse_term_key, term_name
from stages.report.figures import (generated_labels, loss_image_figure, loss_landscapes, mean_history,
                                   method_log_series, outer_update_summary, phi_movement, plot_final_weights,
                                   plot_series, plot_soft_labels, plot_weights, role_ranking,
                                   seed_rankings)


@click.command()
@stage
def main(params) -> None:
    exp = load_experiment(params)
    runs = [load_run(exp, params, seed) for seed in params.seeds]
    if not PER_SEED.is_file():
        raise FileNotFoundError(f"{PER_SEED} is missing: run `dvc repro evaluate`")
    evaluated = json.loads(PER_SEED.read_text())
    names = runs[0].method_final.loss_names(exp.data.task_names)
    steps = np.asarray(runs[0].history["step"])
    weights = mean_history(runs, "weights")
    final = np.array([r.history["weights"][-1][1:] for r in runs])

    # in the dataset's order, the main metric first; per_seed.json also has the per-category breakdowns
    test = evaluated["test"]
    overall = {k: v for k, v in test.items() if not is_breakdown(k)}
    per_group = {k: v for k, v in test.items() if is_breakdown(k)}  # e.g. miou/<category> (Table 7)
    device = trained_device(evaluated, params)
    lines = [
        f"# {params.method} on {params.dataset}",
        "",
        f"Seeds: {params.seeds}; {steps_run(evaluated, runs)} training steps on device `{device}`. Test metrics "
        f"of the model best on validation, mean ± SEM over seeds; the main metric (`{next(iter(test))}`) first.",
        "",
        "| method | " + " | ".join(overall) + " |",
        "|---|" + "---|" * len(overall),
        f"| {params.method} | " + " | ".join(format_mean_sem(v["mean"], v["sem"]) for v in overall.values()) + " |",
        "",
    ]
    if per_group:
        lines += ["| " + " | ".join(["metric", "group", params.method]) + " |", "|---|---|---|"]
        lines += [f"| {k.split('/')[0]} | {k.split('/', 1)[1]} | {format_mean_sem(v['mean'], v['sem'])} |"
                  for k, v in per_group.items()]
        lines += [""]
    epochs = epoch_seconds(params, runs)
    if epochs:
        lines += [f"Mean wall time of a training epoch: {np.mean(epochs):.2f} s (device: {device}).", ""]
    with atomic_dir(FIGURES) as fig_dir:
        if final.shape[1]:  # auxiliaries exist: their learned weights
            lines += weights_section(exp, steps, weights, final, names, fig_dir)
        lines += outer_update_section(exp, runs, weights, final, names)
        if exp.data.inputs.shape[1] == 2 and sum(p.numel() for p in runs[0].model.parameters()) == 2:
            loss_landscapes(exp, runs[0], params, fig_dir / "loss_landscape.png")
            lines += ["## Loss landscapes (paper Figure 2)", "", "![landscapes](figures/loss_landscape.png)", ""]
        lines += generated_task_section(exp, runs, params, fig_dir)
        lines += polynomial_section(runs, names, params, fig_dir)
        # dense tasks: loss images (not for a generated task, which replaces the auxiliaries the images show)
        if type(exp.dataset).display is not Dataset.display and not runs[0].method_final.generated_tasks:
            loss_image_figure(exp, runs[0], params, fig_dir / "loss_images.png")
            lines += ["## Loss images and pixel weights (paper Figure 3)", "",
                      "Columns: image, ground truth, auxiliary loss image (auxiliary channels summed, τ applied), "
                      "main loss image, and the trained method's pixel weight Σ_j ∂L_T/∂ℓ_j (scaled so that a "
                      "uniform weight w shows as w).", "", "![loss images](figures/loss_images.png)", ""]
    write_text(REPORT_MD, "\n".join(lines))
    click.echo(f"wrote {REPORT_MD}")


def trained_device(evaluated: dict, params) -> str:
    """The device training used (per_seed.json, else models/run.json); ``params.device`` (maybe ``auto``) last."""
    if evaluated.get("device"):
        return str(evaluated["device"])
    try:
        return str(json.loads((MODELS / "run.json").read_text())["device"])
    except (OSError, ValueError, KeyError):
        return str(params.device)


def steps_run(evaluated: dict, runs) -> int:
    return int(evaluated.get("steps") or (runs[0].history["step"][-1] if runs[0].history["step"] else 0))


def epoch_seconds(params, runs) -> list[float]:
    """Mean wall time of an epoch per seed, from reports/timings.json (written by train beside models/, which
    holds no wall-clock times so that identical retrains are byte-identical) when it describes these runs;
    models trained before that move carry them in their history."""
    try:
        timings = json.loads(TIMINGS.read_text())
    except (OSError, ValueError):
        timings = None
    if (isinstance(timings, dict) and timings.get("method") == params.method
            and timings.get("dataset") == params.dataset and timings.get("seeds") == list(params.seeds)):
        per_seed = timings.get("per_seed") or {}
        return [float(np.mean(t["epoch_seconds"])) for t in per_seed.values()
                if isinstance(t, dict) and t.get("epoch_seconds")]
    return [float(np.mean(r.history["epoch_seconds"])) for r in runs if r.history.get("epoch_seconds")]


def weights_section(exp, steps, weights, final, names, fig_dir) -> list[str]:
    lines = [
        "## Learned auxiliary weights",
        "",
        "Effective weight of each auxiliary, ∂L_T/∂ℓ_j, at the last step (mean ± SEM over seeds):",
        "",
    ]
    drawn = plot_weights(steps, weights, names, fig_dir / "task_weights.png")
    sem = final.std(0, ddof=1) / np.sqrt(len(final)) if len(final) > 1 else np.zeros(final.shape[1])
    rows = [f"| {names[j + 1]} | {format_mean_sem(final[:, j].mean(), sem[j])} |"
            for j in np.argsort(-final.mean(0))]
    if len(rows) > 10:  # many auxiliaries: the five most and five least weighted
        rows = rows[:5] + ["| … | |"] + rows[-5:]
    lines += ["| task | weight |", "|---|---|", *rows, ""]
    if final.shape[1] > 10:
        rho = plot_final_weights(final, fig_dir / "final_weights.png")
        if exp.dataset.auxiliary_order:
            lines += [f"Auxiliaries are ordered: {exp.dataset.auxiliary_order}. Spearman correlation "
                      f"between task index and learned weight: {rho:.3f}", ""]
        lines += ["![final weights](figures/final_weights.png)"]
    lines += ["", "![weights over training](figures/task_weights.png)" if drawn else
              f"(No figure of the weights over training: {len(steps)} step is too short a run to draw.)", ""]
    return lines


def outer_update_section(exp, runs, weights, final, names) -> list[str]:
    """Whether φ learned: how far it moved, the Neumann series' α·λ̂_max, how often the clip bound, and
    (on stand-ins that document them) whether the learned weights rank helpful above harmful auxiliaries."""
    moved = [phi_movement(r.method_initial.state_dict(), r.method_final.state_dict()) for r in runs]
    summary = outer_update_summary(runs)
    lines: list[str] = []
    if moved and moved[0]:
        lines += ["## How φ learned", "", "| φ tensor | ‖φ_end − φ_start‖ | ‖φ_start‖ |", "|---|---|---|"]
        for i, (name, _, start) in enumerate(moved[0]):
            delta = np.mean([m[i][1] for m in moved if len(m) > i])
            lines.append(f"| {name} | {delta:.4g} | {start:.4g} |")
        lines += ["", f"(mean over seeds; {len(moved[0])} tensors moved)", ""]
    if final.shape[1] and len(weights) > 1:
        delta = np.abs(weights[-1, 1:] - weights[0, 1:]).mean()
        lines += [f"Mean |Δ effective weight| of the auxiliaries from the first step to the last: {delta:.3f}.", ""]
    if summary is not None:
        lines += [f"Hyper steps per seed: {summary['hyper_steps']:.0f}; the hypergradient clip bound in "
                  f"{100 * summary['clip_fraction']:.0f}% of them."]
        if "alpha_lambda_median" in summary:
            lines += [f"α·λ̂_max of the Neumann series at each curvature refresh: min {summary['alpha_lambda_min']:.2f}, "
                      f"median {summary['alpha_lambda_median']:.2f}, max {summary['alpha_lambda_max']:.2f} "
                      f"(≥ 2, where the α of the hyper steps before would make the series diverge: "
                      f"{100 * summary['alpha_lambda_over_2']:.0f}% of refreshes)."]
        if summary["series_cut_fraction"] > 0:
            lines += [f"The curvature outgrew α between refreshes in {100 * summary['series_cut_fraction']:.0f}% of the "
                      "hyper steps: their Neumann series ended early (`series_stop`) and λ̂ was refreshed at the next."]
        lines += [""]
    roles = exp.data.meta.get("aux_roles")
    if roles and final.shape[1]:
        lines += ranking_lines(final, names[1:1 + final.shape[1]], roles)
    return lines


def ranking_lines(final: np.ndarray, names: list[str], roles: dict[str, str]) -> list[str]:
    """Whether the learned weights (``final``: seeds × auxiliaries) rank the helpful auxiliaries above the others:
    the mean weight per documented role, the AUC of the seed-mean weights and, with several seeds, each seed's."""
    per_role, auc = role_ranking(final, names, roles)
    lines = ["The stand-in documents which auxiliaries help; mean final weight per role: "
             + ", ".join(f"{role} {w:.3f}" for role, w in per_role.items()) + "."]
    if auc is not None:
        lines += [f"AUC of the weights, helpful vs harmful (or irrelevant) auxiliaries: {auc:.2f} "
                  "(1 = every helpful one above every harmful one, 0.5 = chance)."]
        if len(final) > 1:
            seeds = seed_rankings(final, names, roles)
            lines += [f"The same AUC in each seed's own final weights: {', '.join(f'{a:.2f}' for a in seeds)} "
                      f"(mean {np.mean(seeds):.2f}); the one above ranks the seed-mean weights, which the seed "
                      "with the largest weights dominates."]
    return lines + [""]


def polynomial_section(runs, names, params, fig_dir) -> list[str]:
    """auxilearn_polynomial (App. C.5): the learned linear weight of every monomial of the losses over training
    (seed mean; paper Figure 8) and its final values, largest first. Nothing for other methods."""
    keys = sorted({k for e in runs[0].history.get("method_log", []) for k in e if parse_term_key(k) is not None},
                  key=lambda k: (sum(parse_term_key(k)), [-e for e in parse_term_key(k)]))
    curves = {term_name(parse_term_key(k), names): method_log_series(runs, k) for k in keys}
    curves = {label: c for label, c in curves.items() if c is not None}
    if not curves:
        return []
    lines = ["## Linear weights over a polynomial kernel of the losses (paper Figure 8)", ""]
    if plot_series(curves, "learned weight φ of the term", f"{params.method}: weight per term (seed mean)",
                   fig_dir / "polynomial_weights.png", legend_outside=True):
        lines += ["![polynomial weights](figures/polynomial_weights.png)", ""]
    final = sorted(((c[1][-1], label) for label, c in curves.items()), reverse=True)
    lines += ["| term | final weight | weight at the first step |", "|---|---|---|"]
    lines += [f"| {label} | {w:.4g} | {curves[label][1][0]:.4g} |" for w, label in final]
    return lines + [""]


def generated_task_section(exp, runs, params, fig_dir) -> list[str]:
    """Label-learning methods: Figure 4 (soft labels of two main classes), the collapse diagnostic and
    the auxiliary/main gradient cosine over training (MAXL Figure 4)."""
    lines: list[str] = []
    curves = {key: method_log_series(runs, key) for key in ("label_entropy", "grad_cosine")}
    titles = {"label_entropy": ("entropy of the mean auxiliary label per group / log ψ", "collapse diagnostic"),
              "grad_cosine": ("cos(∇ℓ_aux, ∇ℓ_main) on shared layers", "auxiliary vs main gradients")}
    for key, curve in curves.items():
        if curve is None:
            continue
        if not lines:
            lines += ["## Generated auxiliary task", ""]
        if plot_series({params.method: curve}, *titles[key], fig_dir / f"{key}.png"):
            lines += [f"Final {key.replace('_', ' ')}: {curve[1][-1]:.3f}. ![{key}](figures/{key}.png)", ""]
        else:
            lines += [f"Final {key.replace('_', ' ')}: {curve[1][-1]:.3f} (logged once: no figure).", ""]
    method = runs[0].method_final
    if "soft_labels" in method.report_sections:
        soft, groups, rows = generated_labels(exp, runs[0])
        if soft.ndim == 2 and len(np.unique(groups)) >= 2:
            hidden = exp.data.meta.get("subclass_labels")
            hidden = np.asarray(hidden)[rows] if hidden is not None else None
            names = list(exp.data.meta.get("class_names", [str(g) for g in range(int(groups.max()) + 1)]))
            nmi = plot_soft_labels(soft, groups, method.generator.mask.cpu().numpy(), names, hidden,
                                   fig_dir / "soft_labels.png", show=tuple(np.unique(groups)[:2]))
            lines += ["Soft auxiliary labels of two main classes on the test set (seed "
                      f"{runs[0].seed}; paper Figure 4):", "", "![soft labels](figures/soft_labels.png)", ""]
            if nmi:
                lines += ["Normalised mutual information between the arg-max generated class and the stand-in's "
                          "hidden sub-class: " + ", ".join(f"{k} {v:.2f}" for k, v in nmi.items()), ""]
    return lines

