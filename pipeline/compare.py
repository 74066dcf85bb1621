"""The paper-style comparison table over every DVC experiment run so far (one row per method).

Not a DVC stage: it reads the experiment history (`dvc exp show`), which no stage can declare as a
dependency. Run it after a grid:  python -m pipeline.compare --dataset toy2d
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from pipeline.io import write_text
from pipeline.metrics import format_mean_sem

# The order of the papers' tables: single task, fixed weights, weighting baselines, learned ones.
METHOD_ORDER = ["stl", "equal", "uncertainty", "dwa", "gradnorm", "gcs", "mgda",
                "auxilearn_linear", "auxilearn_deep_linear", "auxilearn_nonlinear", "auxilearn_convnet",
                "auxilearn_train_set", "random", "maxl_frozen", "maxl", "maxl_first_order",
                "auxilearn_labels", "dae", "rs"]
METRICS_PREFIX = "reports/metrics.json:"


def _created(row: dict[str, Any]) -> str:
    return "9999" if row.get("rev") == "workspace" else str(row.get("Created") or "")


def latest_per_method(rows: list[dict[str, Any]], dataset: str) -> dict[str, dict[str, Any]]:
    """For each method run on ``dataset``, the most recent experiment row that has test metrics."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get(METRICS_PREFIX + "dataset") != dataset:
            continue
        method = row.get(METRICS_PREFIX + "method")
        if not method or not any(k.startswith("test.") and row[k] is not None for k in row):
            continue
        if method not in best or _created(row) > _created(best[method]):
            best[method] = row
    return best


def metric_names(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Metrics with a value in at least one row (exp show lists every dataset's columns for every row)."""
    names: list[str] = []
    for row in rows.values():
        for key, value in row.items():
            if key.startswith("test.") and key.endswith(".mean") and isinstance(value, (int, float)):
                name = key[len("test."):-len(".mean")]
                if name not in names:
                    names.append(name)
    return names


def render_table(rows: dict[str, dict[str, Any]]) -> str:
    names = metric_names(rows)
    order = sorted(rows, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m))
    lines = ["| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for method in order:
        row = rows[method]
        cells = []
        for name in names:
            mean, sem = row.get(f"test.{name}.mean"), row.get(f"test.{name}.sem")
            ok = isinstance(mean, (int, float)) and not math.isnan(mean)
            cells.append(format_mean_sem(mean, sem or 0.0) if ok else "–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@click.command()
@click.option("--dataset", required=True, help="compare the experiments run on this dataset")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="also write the table here (markdown); default: print only")
@click.option("--commits", default=1, show_default=True,
              help="include experiments based on this many commits back from HEAD")
def main(dataset: str, output: Path | None, commits: int) -> None:
    import dvc.api

    rows = latest_per_method(dvc.api.exp_show(num=commits), dataset)
    if not rows:
        raise click.ClickException(f"no experiment with test metrics on dataset {dataset!r}: run `dvc exp run` first")
    table = f"Test metrics on `{dataset}`, mean ± SEM over seeds (latest experiment per method).\n\n" + render_table(rows)
    click.echo(table)
    if output is not None:
        write_text(output, table + "\n")


if __name__ == "__main__":
    main()
