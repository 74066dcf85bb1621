"""The paper-style comparison table over every DVC experiment run so far (one row per method).

Not a DVC stage: it reads the experiment history (`dvc exp show`), which no stage can declare as a
dependency. Run it after a grid:  python -m pipeline.compare --dataset toy2d

Which experiment stands for a method (``--select``):

- ``latest`` (default): the most recent experiment of that method on the dataset;
- ``best-val``: the experiment whose *validation* main metric (``val.<main_metric>.mean`` of
  reports/per_seed.json, read at the experiment's revision: the validation summaries are not DVC metrics,
  so that `dvc exp show` stays small; the main metric is the first one the dataset's ``metrics`` returns,
  its direction from ``pipeline.metrics.higher_is_better``) is best, with the experiment's name and the
  ``methods.*`` / ``datasets.<X>.methods.*`` params that vary across that method's experiments, so a φ grid
  reads off in one line. The test metrics of the chosen experiment are what the table shows.

reports/metrics.json (the DVC metric) holds ``test.<metric>.mean``/``.sem`` with the main metric first, then
``steps``, ``seeds`` (their count) and ``device``; experiments from before that layout (``method``,
``dataset``, ``main_metric``, ``val`` and ``per_seed`` in metrics.json) are read as well.

Every row also shows the run's training steps (metric ``steps``, else the param
``datasets.<X>.train.steps``), its seeds and the commit its experiment is based on; a warning goes to
stderr when the rows differ in steps or seeds. "± SEM" is printed only for runs with at least two seeds.
"""
from __future__ import annotations

import ast
import math
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click

from pipeline.core.io import write_text
from pipeline.metrics.summary import format_mean_sem, higher_is_better

METRICS_PREFIX = "reports/metrics.json:"
PARAMS_PREFIX = "params.yaml:"
DETAILS_PATH = "reports/per_seed.json"  # validation summaries and per-seed values: an out, not a metric
# exp show states of rows that have no finished results of their own
UNFINISHED_STATES = {"Queued", "Running", "Failed"}
DATASET_SECTIONS = ("prepare", "split", "model", "train")  # a dataset's settings, read by every method


def is_dataset_setting(key: str, dataset: str | None = None) -> bool:
    """Whether ``key`` is ``datasets.<dataset>.<prepare|split|model|train>.<key>`` (any dataset when None)."""
    parts = key.split(".")
    return (len(parts) == 4 and parts[0] == "datasets" and parts[2] in DATASET_SECTIONS
            and dataset in (None, parts[1]))


# -- reading exp show rows ------------------------------------------------------------------------------
# dvc.api.exp_show gives one flat dict per row: metrics and params under their flattened names, prefixed
# with the file ("params.yaml:method") only where a name occurs in two files; lists, booleans and None of
# params come back as strings ("[0, 1]", "True", "None") and integers as floats.

def _lookup(row: dict[str, Any], name: str, prefix: str) -> Any:
    return row[prefix + name] if prefix + name in row else row.get(name)


def param(row: dict[str, Any], name: str) -> Any:
    """The value of params.yaml key ``name`` (dotted) in an exp show row, parsed back from its string form."""
    value = _lookup(row, name, PARAMS_PREFIX)
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def metric(row: dict[str, Any], name: str) -> Any:
    return _lookup(row, name, METRICS_PREFIX)


def run_field(row: dict[str, Any], name: str) -> Any:
    """``method``/``dataset`` of a row: from metrics.json in the older layout, else from params.yaml."""
    value = row.get(METRICS_PREFIX + name)
    return value if value not in (None, "") else param(row, name)


def read_details(row: dict[str, Any]) -> dict[str, Any] | None:
    """reports/per_seed.json of the row's experiment (the workspace's file for the workspace row); None
    where it cannot be read (an experiment from before the file existed, a cache without it)."""
    import json

    rev = row.get("rev")
    try:
        if rev == "workspace":
            return json.loads(Path(DETAILS_PATH).read_text())
        import dvc.api

        return json.loads(dvc.api.read(DETAILS_PATH, rev=str(rev)))
    except Exception:  # noqa: BLE001 - any failure means: no validation metrics for this row
        return None


def _details(row: dict[str, Any]) -> dict[str, Any] | None:
    if "_details" not in row:
        row["_details"] = read_details(row)
    return row["_details"]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _created(row: dict[str, Any]) -> datetime:
    """When the row's experiment was made. exp show writes today's times as "03:11 PM" and older dates as
    "Dec 01, 2026" (no time); the workspace counts as newest."""
    if row.get("rev") == "workspace":
        return datetime.max
    text = str(row.get("Created") or "")
    try:
        return datetime.combine(date.today(), datetime.strptime(text, "%I:%M %p").time())
    except ValueError:
        pass
    for parse in (lambda t: datetime.strptime(t, "%b %d, %Y"), datetime.fromisoformat):
        try:
            return parse(text).replace(tzinfo=None)
        except ValueError:
            pass
    return datetime.min


def with_commits(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``rows`` with ``_commit``: the baseline each experiment is based on. exp show lists a
    baseline row (its branch name or short sha as ``rev``) followed by that baseline's experiments; the
    workspace row's commit is "workspace" (it may hold uncommitted changes)."""
    out, baseline = [], None
    for row in rows:
        if row.get("typ") == "baseline":
            baseline = row.get("rev")
        out.append({**row, "_commit": baseline})
    return out


def run_steps(row: dict[str, Any], dataset: str) -> int | None:
    steps = _number(metric(row, "steps"))
    if steps is None:
        steps = _number(param(row, f"datasets.{dataset}.train.steps"))
    return None if steps is None else int(steps)


def run_seeds(row: dict[str, Any]) -> list[int] | None:
    """The run's ``seeds`` param; without it, the seeds that have per-seed test metrics."""
    seeds = param(row, "seeds")
    if not isinstance(seeds, (list, tuple)):
        seeds = row.get(PARAMS_PREFIX + "seeds")  # "seeds" alone may be the metric (their count)
        seeds = ast.literal_eval(seeds) if isinstance(seeds, str) and seeds.startswith("[") else seeds
    if isinstance(seeds, (list, tuple)):
        return [int(s) for s in seeds]
    found = sorted({int(k.split(".")[1][len("seed_"):]) for k, v in row.items()
                    if k.startswith("per_seed.seed_") and _number(v) is not None})
    return found or None


def experiment_name(row: dict[str, Any]) -> str:
    return row.get("Experiment") or str(row.get("rev") or "?")


# -- choosing one row per method ---------------------------------------------------------------------------

def _candidates(rows: list[dict[str, Any]], dataset: str) -> dict[str, list[dict[str, Any]]]:
    """Finished rows of ``dataset`` that have test metrics, by method, in exp show order."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if run_field(row, "dataset") != dataset or row.get("State") in UNFINISHED_STATES:
            continue
        method = run_field(row, "method")
        if not method or not any(k.startswith("test.") and _number(v) is not None for k, v in row.items()):
            continue
        by_method.setdefault(method, []).append(row)
    return by_method


def latest_per_method(rows: list[dict[str, Any]], dataset: str) -> dict[str, dict[str, Any]]:
    """For each method run on ``dataset``, the most recent experiment row that has test metrics (on a tie,
    the first in exp show's order, which lists a baseline's experiments newest first)."""
    best: dict[str, dict[str, Any]] = {}
    for method, candidates in _candidates(rows, dataset).items():
        for row in candidates:
            if method not in best or _created(row) > _created(best[method]):
                best[method] = row
    return best


def _reads(method: str, key: str) -> bool:
    """Whether ``method`` reads the ``methods.<section>.<key>`` or ``datasets.<X>.methods.<section>.<key>`` param;
    a dataset setting (``datasets.<X>.<prepare|split|model|train>.<key>``) is read by every method."""
    from pipeline.core.registry import METHODS

    if is_dataset_setting(key):
        return method in METHODS
    parts = key.split(".")
    section = parts[1] if parts[0] == "methods" else parts[3] if len(parts) > 4 else None
    if method not in METHODS or section is None:
        return False
    spec = METHODS.get(method)
    return spec.config_section == section or (section == "bilevel" and spec.uses_bilevel)


def _sort_value(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def latest_per_setting(rows: list[dict[str, Any]], dataset: str, key: str) -> dict[str, dict[str, Any]]:
    """``latest_per_method`` with one row per value of the param ``key`` for the methods that read it (MAXL's ψ
    sweep: ``--by methods.labels.psi``), labelled ``<method> (<last part of key>=<value>)``; a method that does not
    read ``key`` (single task) keeps one row. A value params.yaml does not write shows as its default."""
    short = key.rsplit(".", 1)[-1]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for method, candidates in _candidates(rows, dataset).items():
        for r in candidates:
            if not _reads(method, key):
                groups.setdefault((method, method), []).append(r)
                continue
            value = param(r, key)
            default = default_value(key, dataset, method) if value is None else None
            text = _param_text(value) if value is not None else \
                f"{_param_text(default)} (default)" if default is not None else "default"
            label = f"{method} ({short}={text})"
            groups.setdefault((method, label), []).append({**r, "_setting": value})
    out: dict[str, dict[str, Any]] = {}
    for (_, label), candidates in sorted(groups.items(), key=lambda kv: (
            kv[0][0], _sort_value(kv[1][0].get("_setting")))):
        out[label] = latest_per_method(candidates, dataset)[run_field(candidates[0], "method")]
    return out


def main_metric(row: dict[str, Any]) -> str | None:
    name = metric(row, "main_metric")
    if not (isinstance(name, str) and name not in ("", "None")):
        details = _details(row) if row.get("rev") is not None else None
        name = details.get("main_metric") if isinstance(details, dict) else None
    return name if isinstance(name, str) and name not in ("", "None") else None


def validation_summary(row: dict[str, Any], name: str) -> tuple[float | None, float | None]:
    """Mean and SEM of validation metric ``name``: in the row (older layout) or in reports/per_seed.json."""
    if f"val.{name}.mean" in row:
        return _number(row.get(f"val.{name}.mean")), _number(row.get(f"val.{name}.sem"))
    details = _details(row)
    value = (details or {}).get("val", {}).get(name) if isinstance(details, dict) else None
    if not isinstance(value, dict):
        return None, None
    return _number(value.get("mean")), _number(value.get("sem"))


def validation_score(row: dict[str, Any]) -> float | None:
    """The row's validation main metric (mean over seeds; may be NaN), None where the row has none."""
    name = main_metric(row)
    return validation_summary(row, name)[0] if name else None


def varying_params(rows: list[dict[str, Any]], dataset: str) -> list[str]:
    """The ``methods.*`` and ``datasets.<dataset>.methods.*`` params whose values differ between ``rows``."""
    prefixes = ("methods.", f"datasets.{dataset}.methods")
    names: list[str] = []
    for row in rows:
        for key in row:
            name = key[len(PARAMS_PREFIX):] if key.startswith(PARAMS_PREFIX) else key
            if name.startswith(prefixes) and name not in names:
                names.append(name)
    return [n for n in names if len({repr(param(r, n)) for r in rows}) > 1]


def best_val_per_method(rows: list[dict[str, Any]], dataset: str,
                        ) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]], list[str]]:
    """For each method run on ``dataset``, the row with the best validation main metric.

    Returns the chosen rows, per method the params (``varying_params``) that differ across the method's
    rows with validation metrics, and notes on what was left out (rows without validation metrics). On a
    tie, a named experiment wins over the workspace (which repeats the last one applied), then the first
    in exp show's order.
    """
    best: dict[str, dict[str, Any]] = {}
    varying: dict[str, list[str]] = {}
    notes: list[str] = []
    for method, candidates in _candidates(rows, dataset).items():
        scored = [(validation_score(r), i, r) for i, r in enumerate(candidates)]
        usable = [(s, i, r) for s, i, r in scored if s is not None and not math.isnan(s)]
        missing = sum(s is None for s, _, _ in scored)
        if missing:
            notes.append(f"{method}: {missing} of {len(scored)} experiments have no validation main metric "
                         "(run before `evaluate` wrote it?) and are left out")
        if len(scored) - len(usable) - missing:
            notes.append(f"{method}: {len(scored) - len(usable) - missing} of {len(scored)} experiments have a "
                         "NaN validation main metric and are left out")
        if not usable:
            continue
        names = {main_metric(r) for _, _, r in usable}
        if len(names) > 1:
            raise click.ClickException(f"{method} on {dataset}: experiments disagree on the main metric "
                                       f"({', '.join(sorted(names))})")
        sign = -1.0 if higher_is_better(names.pop()) else 1.0
        _, _, chosen = min(usable, key=lambda t: (sign * t[0], t[2].get("rev") == "workspace", t[1]))
        best[method] = chosen
        varying[method] = varying_params([r for _, _, r in usable], dataset)
    return best, varying, notes


# -- the table ------------------------------------------------------------------------------------------------

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


def _mean_sem_cell(row: dict[str, Any], split: str, name: str, seeds: list[int] | None) -> str:
    if split == "val":
        mean, sem = validation_summary(row, name)
    else:
        mean, sem = _number(row.get(f"{split}.{name}.mean")), _number(row.get(f"{split}.{name}.sem"))
    if mean is None or math.isnan(mean):
        return "–"
    one_seed = seeds is not None and len(seeds) < 2
    return format_mean_sem(mean, None if one_seed else (sem or 0.0))


def _param_text(value: Any) -> str:
    return "unset" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def default_value(name: str, dataset: str, method: str) -> Any:
    """The value a ``methods.<section>.<key>``, ``datasets.<dataset>.methods.<section>.<key>`` or dataset setting
    ``datasets.<dataset>.<section>.<key>`` param has when params.yaml does not write it: the method section's
    default under the dataset's own overrides, or the dataset's own default (params.yaml holds only what a run
    changes)."""
    from pipeline.config.params import parse_params

    parts = name.split(".")
    try:
        params = parse_params({"dataset": dataset, "method": method})
        if is_dataset_setting(name):
            return getattr(getattr(params.profile, parts[2]), parts[3])
        section, key = (parts[1], parts[2]) if parts[0] == "methods" else (parts[3], parts[4])
        return getattr(params.method_config(section), key)
    except Exception:  # noqa: BLE001 (an unknown section or key: nothing to show)
        return None


def _param_cell(row: dict[str, Any], name: str, dataset: str, method: str) -> str:
    value = param(row, name)
    if value is None:
        default = default_value(name, dataset, method)
        return "unset" if default is None else f"{_param_text(default)} (default)"
    return _param_text(value)


def _order(rows: dict[str, Any]) -> list[str]:
    """The papers' table order of the methods (a ``--by`` label sorts by its method, then by its value)."""
    from pipeline.methods.base import method_order  # the papers' table order, declared by each registry entry

    order = method_order()

    def key(label: str) -> tuple:
        method = label.split(" ", 1)[0]
        return (order.index(method) if method in order else len(order), method,
                _sort_value(rows[label].get("_setting")), label)

    return sorted(rows, key=key)


def render_table(rows: dict[str, dict[str, Any]], dataset: str | None = None,
                 varying: dict[str, list[str]] | None = None) -> str:
    """One markdown row per method: test metrics (mean ± SEM, the mean alone for one seed), then steps,
    seeds and commit. With ``varying`` (``--select best-val``), also the chosen experiment with the params
    that differ across its method's experiments, and the validation main metric it was chosen by."""
    names = metric_names(rows)
    head = ["method"]
    if varying is not None:
        head += ["chosen (best validation)", "val main metric"]
    head += names + ["steps", "seeds", "commit"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    for method in _order(rows):
        row = rows[method]
        seeds = run_seeds(row)
        cells = [method]
        if varying is not None:
            chosen = experiment_name(row)
            diffs = ", ".join(f"{n}={_param_cell(row, n, dataset, method)}" for n in varying.get(method, []))
            name = main_metric(row)
            cells += [f"{chosen}: {diffs}" if diffs else chosen,
                      f"{name} {_mean_sem_cell(row, 'val', name, seeds)}" if name else "–"]
        cells += [_mean_sem_cell(row, "test", name, seeds) for name in names]
        steps = run_steps(row, dataset) if dataset else None
        cells += ["?" if steps is None else str(steps),
                  "?" if seeds is None else ",".join(map(str, seeds)),
                  str(row.get("_commit") or "?")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mismatch_warnings(rows: dict[str, dict[str, Any]], dataset: str) -> list[str]:
    """One line per property (steps, seeds) on which the chosen rows differ."""
    warnings = []
    for what, get in (("steps", lambda r: run_steps(r, dataset)), ("seeds", run_seeds)):
        values = {m: get(rows[m]) for m in _order(rows)}
        if len({repr(v) for v in values.values()}) > 1:
            listing = "; ".join(f"{m}: {'?' if v is None else v}" for m, v in values.items())
            warnings.append(f"warning: the rows differ in {what} ({listing}); their numbers are not like for like")
    return warnings


SELECTIONS = {"latest": "latest experiment per method",
              "best-val": "per method the experiment with the best validation main metric"}


@click.command()
@click.option("--dataset", required=True, help="compare the experiments run on this dataset")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="also write the table here (markdown); default: print only")
@click.option("--commits", default=1, show_default=True,
              help="include experiments based on this many commits back from HEAD")
@click.option("--select", "selection", type=click.Choice(list(SELECTIONS)), default="latest", show_default=True,
              help="which experiment stands for a method: the latest, or the best on the validation main metric")
@click.option("--by", "by", default=None, metavar="PARAM",
              help="one row per value of this methods.* param for the methods that read it (latest each), e.g. "
                   "methods.labels.psi for MAXL's ψ sweep against single task, or of a dataset setting for every "
                   "method, e.g. datasets.cub.split.aux (AuxiLearn's C.4 grid)")
def main(dataset: str, output: Path | None, commits: int, selection: str, by: str | None) -> None:
    import dvc.api

    all_rows = with_commits(dvc.api.exp_show(num=commits))
    varying = None
    if by is not None:
        if selection != "latest" or not (by.startswith("methods.") or by.startswith(f"datasets.{dataset}.methods.")
                                          or is_dataset_setting(by, dataset)):
            raise click.ClickException(f"--by {by}: give a methods.<section>.<key>, datasets.{dataset}.methods."
                                       f"<section>.<key> or datasets.{dataset}.<{'|'.join(DATASET_SECTIONS)}>.<key> "
                                       "param, with --select latest")
        rows = latest_per_setting(all_rows, dataset, by)
        selection_text = f"latest experiment per method and value of {by}"
    elif selection == "best-val":
        rows, varying, notes = best_val_per_method(all_rows, dataset)
        for note in notes:
            click.echo(f"note: {note}", err=True)
    else:
        rows = latest_per_method(all_rows, dataset)
    if by is None:
        selection_text = SELECTIONS[selection]
    if not rows:
        what = "validation and test metrics" if selection == "best-val" else "test metrics"
        raise click.ClickException(f"no experiment with {what} on dataset {dataset!r}: run `dvc exp run` first")
    for warning in mismatch_warnings(rows, dataset):
        click.echo(warning, err=True)
    table = (f"Test metrics on `{dataset}`, mean ± SEM over seeds (the mean alone for one seed); "
             f"{selection_text}.\n\n" + render_table(rows, dataset, varying))
    click.echo(table)
    if output is not None:
        write_text(output, table + "\n")


if __name__ == "__main__":
    main()
