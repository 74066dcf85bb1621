"""DVC stage `evaluate`: test metrics per seed, and their mean and SEM, to reports/metrics.json."""
import click
import torch

from pipeline.cli import stage
from pipeline.experiment import load_experiment, load_run
from pipeline.io import write_json
from pipeline.metrics import aggregate
from pipeline.paths import METRICS


@click.command()
@stage
def main(params) -> None:
    exp = load_experiment(params)
    test = torch.as_tensor(exp.splits["test"])
    per_seed = {}
    for seed in params.seeds:
        run = load_run(exp, params, seed)
        per_seed[seed] = exp.dataset.metrics(run.model, exp.data, test)
    summary = aggregate(per_seed)
    write_json(METRICS, {
        "method": params.method,
        "dataset": params.dataset,
        "test": summary,
        "per_seed": {f"seed_{s}": m for s, m in per_seed.items()},
    })
    click.echo("test " + ", ".join(f"{k} = {v['mean']:.4f} ± {v['sem']:.4f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
