"""DVC stage `evaluate`: test and validation metrics per seed; their mean and SEM.

Two files, so that `dvc exp show` stays small:

- reports/metrics.json, the DVC metric: ``test.<metric>.mean``/``.sem`` per metric, the dataset's main metric
  (the first one its ``metrics`` returns) first (written in that order: DVC keeps a file's key order), then
  ``steps`` (training steps), ``seeds`` (how many) and ``device`` (the device training used, from
  models/run.json: ``cpu``, ``cuda:0``, never ``auto``). For toy2d: 2 × 2 + 3 = 7 columns.
- reports/per_seed.json, an out that is not a metric: ``method``, ``dataset``, ``main_metric``, the
  validation summaries ``val`` (on ``splits["val"]``, the split that picked each seed's best model: what
  `python -m pipeline.compare --select best-val` ranks by, direction from
  ``pipeline.metrics.higher_is_better``), and the per-seed test and validation values.
"""
import json

import click
import torch

from pipeline.config.stage import stage
from pipeline.engine.experiment import load_experiment, load_run
from pipeline.core.io import write_text
from pipeline.metrics.summary import aggregate, summary_metrics
from pipeline.core.paths import METRICS, MODELS, PER_SEED


def trained_device(params) -> str:
    """The device models/ was trained on (recorded by train), else the one asked for."""
    try:
        return str(json.loads((MODELS / "run.json").read_text())["device"])
    except (OSError, ValueError, KeyError):
        return str(params.device)


@click.command()
@stage
def main(params) -> None:
    exp = load_experiment(params)
    test = torch.as_tensor(exp.splits["test"])
    val = torch.as_tensor(exp.splits["val"])
    per_seed, per_seed_val = {}, {}
    for seed in params.seeds:
        run = load_run(exp, params, seed)
        per_seed[seed] = exp.dataset.metrics(run.model, exp.data, test)
        per_seed_val[seed] = exp.dataset.metrics(run.model, exp.data, val)
    summary = aggregate(per_seed)
    val_summary = aggregate(per_seed_val)
    device = trained_device(params)
    # not write_json: it sorts keys, and the main metric must stay first (DVC shows columns in file order)
    write_text(METRICS, json.dumps(summary_metrics(summary, params.train.steps, len(params.seeds), device),
                                   indent=2) + "\n")
    write_text(PER_SEED, json.dumps({
        "method": params.method,
        "dataset": params.dataset,
        "main_metric": next(iter(val_summary)),
        "device": device,
        "steps": params.train.steps,
        "seeds": list(params.seeds),
        "test": summary,  # with the per-category breakdowns metrics.json leaves out
        "val": val_summary,
        "per_seed": {f"seed_{s}": m for s, m in per_seed.items()},
        "per_seed_val": {f"seed_{s}": m for s, m in per_seed_val.items()},
    }, indent=2) + "\n")
    click.echo("test " + ", ".join(f"{k} = {v['mean']:.4f} ± {v['sem']:.4f}" for k, v in summary.items()))
    click.echo("val  " + ", ".join(f"{k} = {v['mean']:.4f} ± {v['sem']:.4f}" for k, v in val_summary.items()))


if __name__ == "__main__":
    main()
