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


@click.command()
@stage
def main(params) -> None:
    cfg = usefulness_config(params)
    exp = load_experiment(params)
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
