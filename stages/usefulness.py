"""DVC stage `usefulness`: which auxiliaries will help, before any auxiliary training (AuxiLearn Prop. 1).

Trains the main task alone per seed (or, with ``usefulness.base_weight`` φ0 > 0, the whole network on
ℓ_main + φ0·τ·Σ_j ℓ_j, so the derivative is taken at φ = φ0·1), then scores every auxiliary by
u_j = −dL_A/dφ_j and by the cosine proxy;
writes reports/usefulness.md (ranked table), reports/usefulness.png, reports/usefulness.csv (every auxiliary)
and the small metrics file reports/usefulness.json. See pipeline/usefulness.py.
"""
import csv

import click

from pipeline.config.stage import stage
from pipeline.engine.experiment import load_experiment
from pipeline.core.io import atomic_path, write_json, write_text
from pipeline.core.paths import REPORTS
from pipeline.engine.training import resolve_device
from pipeline.usefulness import UsefulnessConfig, analyse, csv_rows, markdown_report, plot_usefulness, summarise

USEFULNESS_MD = REPORTS / "usefulness.md"
USEFULNESS_PNG = REPORTS / "usefulness.png"
USEFULNESS_CSV = REPORTS / "usefulness.csv"
USEFULNESS_JSON = REPORTS / "usefulness.json"


def usefulness_config(params) -> UsefulnessConfig:
    """The ``usefulness`` section of params.yaml (over the selected dataset's ``default_usefulness``, merged
    by the schema)."""
    return params.usefulness


def write_not_applicable(dataset: str) -> None:
    """The stage's outputs for a dataset without given auxiliary tasks (nothing to score), so the pipeline
    completes: a one-line report, a header-only table, a figure saying so, ``"applicable": false``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reason = (f"{dataset} has no given auxiliary tasks (a method may generate one): the usefulness analysis "
              "(AuxiLearn Prop. 1) scores given auxiliaries, so there is nothing to score")
    write_text(USEFULNESS_MD, f"# Usefulness of the auxiliaries: {dataset}\n\n{reason}.\n")
    with atomic_path(USEFULNESS_CSV) as tmp:
        tmp.write_text("auxiliary\n")
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{dataset}: no given auxiliary tasks to score", ha="center", va="center")
    with atomic_path(USEFULNESS_PNG) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})  # no version stamp: byte-stable
    plt.close(fig)
    write_json(USEFULNESS_JSON, {"dataset": dataset, "applicable": False, "num_aux": 0})
    click.echo(f"usefulness: {reason}; wrote {USEFULNESS_MD}")


@click.command()
@stage
def main(params) -> None:
    cfg = usefulness_config(params)
    exp = load_experiment(params)
    if exp.data.num_tasks < 2:  # the image-classification family: only a main task, the auxiliary one is generated
        write_not_applicable(params.dataset)
        return
    roles = exp.data.meta.get("aux_roles") or None
    result = analyse(exp.dataset, exp.data, exp.splits, params.train, params.profile.model, cfg, params.seeds,
                     resolve_device(params.device))
    summary = summarise(result, roles, ordered=bool(exp.dataset.auxiliary_order))
    summary = {"dataset": params.dataset, **summary}
    plot_usefulness(result, roles, USEFULNESS_PNG)
    header, rows = csv_rows(result, roles)
    with atomic_path(USEFULNESS_CSV) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
    write_text(USEFULNESS_MD, markdown_report(result, summary, roles, cfg, params.dataset))
    write_json(USEFULNESS_JSON, summary)
    click.echo(f"usefulness of {len(result.task_names)} auxiliaries on {params.dataset} at φ = {cfg.base_weight:g}·1: "
               "top (Prop. 1) "
               f"{summary['prop1']['top']}, top (cosine) {summary['cosine']['top']}; {result.seconds:.1f} s "
               f"(the wall time is printed, not stored: the outputs stay byte-stable); wrote {USEFULNESS_MD}")


if __name__ == "__main__":
    main()
