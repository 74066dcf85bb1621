"""DVC stage `report`: reports/report.md with the metrics table and figures, plus CSVs for `dvc plots`."""
import json

import click
import numpy as np

from pipeline.cli import stage
from pipeline.experiment import load_experiment, load_run
from pipeline.io import atomic_dir, write_text
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
        f"| {params.method} | " + " | ".join(f"{v['mean']:.4f} ± {v['sem']:.4f}" for v in metrics["test"].values()) + " |",
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
        if final.shape[1] <= 10:
            lines += ["| task | weight |", "|---|---|"]
            sem = final.std(0, ddof=1) / np.sqrt(len(final)) if len(final) > 1 else np.zeros(final.shape[1])
            lines += [f"| {n} | {m:.3f} ± {s:.3f} |" for n, m, s in zip(names[1:], final.mean(0), sem)]
        else:
            rho = plot_final_weights(final, fig_dir / "final_weights.png")
            lines += [f"Spearman correlation between task index and weight: {rho:.3f}", "",
                      "![final weights](figures/final_weights.png)"]
        lines += ["", "![weights over training](figures/task_weights.png)", ""]
        if exp.data.inputs.shape[1] == 2 and sum(p.numel() for p in runs[0].model.parameters()) == 2:
            loss_landscapes(exp, runs[0], params, fig_dir / "loss_landscape.png")
            lines += ["## Loss landscapes (paper Figure 2)", "", "![landscapes](figures/loss_landscape.png)", ""]
    write_text(REPORT_MD, "\n".join(lines))
    click.echo(f"wrote {REPORT_MD}")


if __name__ == "__main__":
    main()
