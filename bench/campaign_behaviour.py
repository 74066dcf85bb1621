"""Behaviour campaign: does AuxiLearn do what it is for on stand-ins drawn with seeds no default was chosen on?

    OMP_NUM_THREADS=1 python bench/campaign_behaviour.py                      # every variant below
    OMP_NUM_THREADS=1 python bench/campaign_behaviour.py -d demo,toy2d -m auxilearn_linear
    OMP_NUM_THREADS=1 python bench/campaign_behaviour.py --variants '{"nyuv2": [{"prepare": {"standin_seed": 31}}]}'

For each variant (the dataset's own ``prepare`` with another seed, some with other sizes), STL, Equal and each
AuxiLearn method train from the defaults on seeds 0-2, as ``bench/measure_methods.py`` does (its ``prepared`` and
``trained``). Printed per method: the main test metric (mean ± SEM), its difference from STL and from Equal, also
in units of their combined SEM (positive = better, whichever way the metric improves), how far the effective
weights moved, and whether the right auxiliaries got the weight: the AUC of the final weights, helpful against
harmful (or irrelevant) auxiliaries, where the stand-in documents roles (``aux_roles``; 1 = every helpful one
above every other; of the seed-mean weights, then of each seed's own), or Spearman(weight, noise index) where it
grades its auxiliaries by noise (``noisy_aux``: negative = the cleaner ones weigh more). The last lines count the runs whose ranking is right and whose main
metric is at or above STL's.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.measure_methods import mean_sem_text, prepared, trained  # noqa: E402
from pipeline.config.params import parse_params  # noqa: E402
from pipeline.metrics.summary import higher_is_better  # noqa: E402
from stages.report.figures import role_ranking, seed_rankings  # noqa: E402

# Seeds not used to choose any default (the README's tables use 0-7 and 11 on these datasets)
VARIANTS: dict[str, list[dict]] = {
    "toy2d": [{"prepare": {"seed": 21}}, {"prepare": {"seed": 22, "sigma_main": 2.0}}],
    "noisy_aux": [{"prepare": {"seed": 21}}, {"prepare": {"seed": 22, "num_aux": 30, "sigma_aux": 0.5}}],
    "demo": [{"prepare": {"seed": 21}}, {"prepare": {"seed": 22, "grid": 9, "label_noise": 0.35}}],
    "cub": [{"prepare": {"standin_seed": 21}}],
}
METHODS = "stl,equal,auxilearn_linear,auxilearn_nonlinear"


def _ranking(data, final: np.ndarray) -> tuple[str, float | None]:
    """('auc' | 'spearman', value) of the mean final auxiliary weights; (…, None) where nothing says the order."""
    roles = data.meta.get("aux_roles")
    names = data.task_names[1:1 + final.shape[1]]
    if roles:
        return "auc", role_ranking(final, names, roles)[1]
    if final.shape[1] > 2:
        return "spearman", float(spearmanr(np.arange(final.shape[1]), final.mean(0)).statistic)
    return "-", None


def _right(kind: str, value: float | None) -> bool | None:
    if value is None:
        return None
    return value > 0.5 if kind == "auc" else value < 0


@click.command()
@click.option("-d", "--datasets", "datasets", default=",".join(VARIANTS), show_default=True)
@click.option("-m", "--methods", "methods", default=METHODS, show_default=True,
              help="comma-separated; stl and equal are always run (the comparisons)")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--variants", "variants_json", default=None,
              help='JSON {dataset: [settings, ...]} in place of the built-in variants (and of -d), e.g. other draws')
def main(datasets: str, methods: str, seeds: str, variants_json: str | None) -> None:
    torch.set_num_threads(1)
    variants = json.loads(variants_json) if variants_json else {d: VARIANTS[d] for d in datasets.split(",")}
    seed_list = [int(s) for s in seeds.split(",")]
    learned = [m for m in methods.split(",") if m not in ("stl", "equal")]
    tally = {"ranked right": 0, "ranked": 0, "at or above stl": 0, "runs": 0}
    for dataset, drawn in variants.items():
        for variant in drawn:
            base = {"dataset": dataset, "datasets": {dataset: variant}, "seeds": seed_list}
            ds, data, splits = prepared(parse_params({**base, "method": "stl"}))
            click.echo(f"\n{dataset} {json.dumps(variant)}")
            scores: dict[str, np.ndarray] = {}
            for method in ["stl", "equal", *learned]:
                start = time.time()
                params = parse_params({**base, "method": method})
                runs = [trained(ds, data, splits, params, seed) for seed in seed_list]
                main_metric = next(iter(runs[0][1]))
                sign = 1.0 if higher_is_better(main_metric) else -1.0
                scores[method] = np.array([test[main_metric] for _, test in runs])
                weights = [np.asarray(result.history["weights"]) for result, _ in runs]
                final = np.stack([w[-1, 1:] for w in weights])
                moved = float(np.mean([np.abs(w[-1, 1:] - w[0, 1:]).mean() for w in weights]))
                line = f"  {method:22s} {main_metric} {mean_sem_text(scores[method].tolist(), '.4g', '.2g')}"
                for other in ("stl", "equal"):
                    if other != method and other in scores:
                        line += f"  vs {other} {_in_sems(sign, scores[method], scores[other])}"
                if method in learned:
                    kind, value = _ranking(data, final)
                    line += f"  moved {moved:.3g}  {kind} {'n/a' if value is None else f'{value:.2f}'}"
                    if kind == "auc" and value is not None and len(final) > 1:  # the pooled one follows the largest
                        names = data.task_names[1:1 + final.shape[1]]
                        line += " (seeds " + " ".join(f"{a:.2f}" for a in seed_rankings(final, names,
                                                                                         data.meta["aux_roles"])) + ")"
                    tally["runs"] += 1
                    right = _right(kind, value)
                    if right is not None:
                        tally["ranked"] += 1
                        tally["ranked right"] += int(right)
                    tally["at or above stl"] += int(sign * (scores[method].mean() - scores["stl"].mean()) >= 0)
                click.echo(f"{line}  [{time.time() - start:.0f} s]")
    click.echo(f"\nlearned-weight runs {tally['runs']}: ranking right in {tally['ranked right']} of {tally['ranked']} "
               f"with a documented order; main metric at or above STL's in {tally['at or above stl']}")


def _in_sems(sign: float, a: np.ndarray, b: np.ndarray) -> str:
    """(a − b) signed so that positive means a is better, and in units of the combined SEM where that is not 0."""
    n = len(a)
    sem = float(np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / n)) if n > 1 else 0.0
    delta = float(sign * (a.mean() - b.mean()))
    return f"{delta:+.3g} ({delta / sem:+.1f} SEM)" if sem > 0 else f"{delta:+.3g} (SEM 0)"


if __name__ == "__main__":
    main()
