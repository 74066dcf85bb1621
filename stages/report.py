"""DVC stage `report`: reports/report.md with the metrics table and figures, plus CSVs for `dvc plots`."""
import json

import click
import numpy as np

from pipeline.cli import stage
from pipeline.experiment import load_experiment, load_run
from pipeline.io import atomic_dir, write_text
from pipeline.metrics import format_mean_sem
from pipeline.paths import FIGURES, METRICS, PLOTS, REPORT_MD
from pipeline.report import loss_landscapes, mean_history, plot_final_weights, plot_weights, write_csv


@click.command()
@stage
def main(params) -> None:
    exp = load_experiment(params)
    runs = [load_run(exp, params, seed) for seed in params.seeds]
    if not METRICS.is_file():
        raise FileNotFoundError(f"{METRICS} is missing: run `dvc repro evaluate`")
    metrics = json.loads(METRICS.read_text())
    names = exp.data.task_names
    steps = np.asarray(runs[0].history["step"])
    weights = mean_history(runs, "weights")
    final = np.array([r.history["weights"][-1][1:] for r in runs])

    lines = [
        f"# {params.method} on {params.dataset}",
        "",
        f"Seeds: {params.seeds}. Test metrics of the model best on validation, mean ± SEM over seeds.",
        "",
        "| method | " + " | ".join(metrics["test"]) + " |",
        "|---|" + "---|" * len(metrics["test"]),
        f"| {params.method} | " + " | ".join(format_mean_sem(v["mean"], v["sem"]) for v in metrics["test"].values()) + " |",
        "",
        "## Learned auxiliary weights",
        "",
        "Effective weight of each auxiliary, ∂L_T/∂ℓ_j, at the last step (mean ± SEM over seeds):",
        "",
    ]
    with atomic_dir(FIGURES) as fig_dir, atomic_dir(PLOTS) as plot_dir:
        plot_weights(steps, weights, names, fig_dir / "task_weights.png")
        write_csv(plot_dir / "weights.csv", ["step", *names], np.column_stack([steps, weights]))
        losses = np.column_stack([steps, mean_history(runs, "train_loss"), mean_history(runs, "main_loss")])
        write_csv(plot_dir / "losses.csv", ["step", "train_loss", "main_loss"], losses)
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
        lines += ["", "![weights over training](figures/task_weights.png)", ""]
        if exp.data.inputs.shape[1] == 2 and sum(p.numel() for p in runs[0].model.parameters()) == 2:
            loss_landscapes(exp, runs[0], params, fig_dir / "loss_landscape.png")
            lines += ["## Loss landscapes (paper Figure 2)", "", "![landscapes](figures/loss_landscape.png)", ""]
    write_text(REPORT_MD, "\n".join(lines))
    click.echo(f"wrote {REPORT_MD}")


if __name__ == "__main__":
    main()
