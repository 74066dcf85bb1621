"""Variant campaign: every method on stand-ins drawn with other seeds and other sizes than the defaults, for a
few steps each, to find the (dataset, variant, method) combinations that crash instead of training.

    OMP_NUM_THREADS=1 python bench/campaign_variants.py                  # every dataset below, every method
    OMP_NUM_THREADS=1 python bench/campaign_variants.py -d nyuv2 -m maxl # some

Each variant is prepared once (the dataset's own ``prepare`` with the overrides, in a temporary folder) and split
with the variant's split settings (the defaults where it names none). Then each method trains one seed for
``--steps`` steps (``hyper_every`` and the other outer intervals shortened to 5, in place of the dataset's own
method overrides, so that outer steps run), and its test metrics are computed, as ``bench/measure_methods.py``
does. A method the parameters refuse because the dataset lacks what it needs (``parse_params``: "method …
needs a dataset with …") or because it needs a file only a user has ("needs a local file": the embedding of
``nearest_neighbour``) is listed as refused, not as a failure. Printed: one line per run, then the failures
with their tracebacks' last lines, and ``runs N / trained M / refused R / failed F``.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import click
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.measure_methods import prepared, trained  # noqa: E402
from pipeline.config.params import parse_params  # noqa: E402
from pipeline.core.registry import METHODS  # noqa: E402

# Stand-ins drawn with other seeds and at other sizes than the defaults (small, so that the campaign is quick)
VARIANTS: dict[str, list[dict]] = {
    "demo": [{"prepare": {"seed": 5, "grid": 9, "shapes_per_category": 12, "label_noise": 0.0},
              "split": {"seed": 2, "aux": 4, "val": 8, "test": 16}},
             {"prepare": {"seed": 2, "grid": 7, "shapes_per_category": 8, "jitter": 0.1, "label_noise": 0.5},
              "split": {"seed": 1, "aux": 2, "val": 6, "test": 8}}],
    "toy2d": [{"prepare": {"seed": 4, "num_samples": 400, "sigma_main": 2.0},
               "split": {"seed": 3, "aux": 30, "val": 30, "test": 200}}],
    "noisy_aux": [{"prepare": {"seed": 6, "num_samples": 400, "dim": 3, "num_aux": 7, "sigma_aux": 1.0},
                   "split": {"seed": 1, "aux": 40, "val": 40, "test": 200}}],
    "cub": [{"prepare": {"standin_seed": 3, "standin_num_classes": 12, "standin_images_per_class": 10,
                         "image_size": 32}}],
    "nyuv2": [{"prepare": {"standin_seed": 4, "standin_train": 60, "standin_test": 20, "image_size": [40, 56]}}],
    "cifar10": [{"prepare": {"standin_seed": 2, "standin_num_classes": 4, "standin_subclasses": 2,
                             "standin_train_per_class": 60, "standin_test_per_class": 20},
                 "split": {"seed": 3, "train_fraction": 0.2, "val": 40}}],
    "shapenet_part": [{"prepare": {"standin_seed": 1, "standin_categories": 2, "standin_train": 6, "standin_val": 2,
                                   "standin_test": 3, "points": 512},
                       "split": {"seed": 2, "train_per_category": 4, "aux_per_category": 1}}],
    "cityscapes": [{"prepare": {"standin_seed": 2, "standin_size": [24, 40], "standin_train": 40, "standin_test": 12}}],
    "amazon": [{"prepare": {"standin_seed": 3, "standin_users": 40, "standin_items": 30, "standin_categories": 3,
                            "standin_reviews": 600, "standin_dim": 2}}],
    "cifar100": [{"prepare": {"standin_seed": 4, "standin_num_classes": 6, "standin_subclasses": 2,
                              "standin_train_per_class": 40, "standin_test_per_class": 10, "primary_level": "coarse"},
                  "split": {"seed": 1, "train_fraction": 0.4, "val": 30}}],
    "oxford_pet": [{"prepare": {"standin_seed": 5, "standin_num_classes": 4, "standin_subclasses": 2,
                                "standin_train_per_class": 20, "standin_test_per_class": 6, "image_size": 24},
                    "split": {"seed": 2, "k_shot": 10}}],
    "pet_cub": [{"prepare": {"primary": {"standin_num_classes": 4, "standin_train_per_class": 20,
                                         "standin_test_per_class": 6, "standin_seed": 2},
                             "auxiliary": {"standin_num_classes": 8, "standin_images_per_class": 8, "standin_seed": 2}},
                 "split": {"seed": 1, "k_shot": 10}}],
}
# Every interval that would otherwise not come round in a short run
SHORT = {"bilevel": {"hyper_every": 5}, "dtg": {"hyper_every": 5}, "labels": {"diagnose_every": 5}}


def _run(dataset: str, variant: dict, method: str, steps: int, ds, data, splits) -> tuple[str, str]:
    raw = {"dataset": dataset, "method": method, "seeds": [0],
           "datasets": {dataset: {**variant, "train": {"steps": steps, "eval_every": steps},
                                  "methods": SHORT}}}
    try:
        params = parse_params(raw)
    except ValueError as err:
        message = " / ".join(line.strip() for line in str(err).splitlines()[1:] or [str(err)])
        expected = ("needs a dataset with", "needs a local file")  # does not fit the dataset; needs a user's file
        if not any(reason in message for reason in expected):
            raise
        return "refused", message
    _, metrics = trained(ds, data, splits, params, 0)
    first = next(iter(metrics))
    return "trained", f"{first} {metrics[first]:.4g}"


@click.command()
@click.option("-d", "--datasets", "datasets", default=",".join(VARIANTS), show_default=True)
@click.option("-m", "--methods", "methods", default="", help="comma-separated; default every registered method")
@click.option("--steps", default=30, show_default=True, help="training steps per run")
def main(datasets: str, methods: str, steps: int) -> None:
    """Train every method a few steps on variant stand-ins; list what crashes."""
    torch.set_num_threads(1)
    names = methods.split(",") if methods else sorted(METHODS.names())
    counts = {"trained": 0, "refused": 0, "failed": 0}
    failures = []
    for dataset in datasets.split(","):
        for variant in VARIANTS[dataset]:
            base = parse_params({"dataset": dataset, "method": "stl", "datasets": {dataset: variant}})
            ds, data, splits = prepared(base)
            click.echo(f"{dataset} {json.dumps(variant)}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
            for method in names:
                start = time.time()
                try:
                    outcome, detail = _run(dataset, variant, method, steps, ds, data, splits)
                except Exception as err:  # noqa: BLE001  (the campaign's point: list every failure)
                    outcome, detail = "failed", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                    failures.append((dataset, variant, method, traceback.format_exc()))
                counts[outcome] += 1
                click.echo(f"  {method}: {outcome} ({detail}) [{time.time() - start:.1f} s]")
    for dataset, variant, method, trace in failures:
        click.echo(f"\n--- {dataset} {json.dumps(variant)} {method}\n" + "\n".join(trace.splitlines()[-8:]))
    click.echo(f"\nruns {sum(counts.values())} / trained {counts['trained']} / refused {counts['refused']} / "
               f"failed {counts['failed']}")


if __name__ == "__main__":
    main()
