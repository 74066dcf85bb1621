"""Write a pre-trained embedding network for ``nearest_neighbour`` (``methods.labels.nn_weights``): trains the
dataset's primary network single-task (``stl``, one seed) on a preparation of your choice and saves its backbone's
state dict (bare keys, ``torch.save``), which is the file format the labeller reads.

MAXL embeds with an ImageNet-pretrained network; nothing is downloaded here, so either point ``nn_weights`` at a
state dict of the same backbone trained elsewhere (a run's ``models/seed_<s>/model.pt`` works as it is: its
``net.backbone.*`` keys are taken), or make one with this script on other data than the run's. The README's stand-in
table uses a stand-in drawn with another seed (other appearance styles of the same shapes):

    python bench/pretrain_embedding.py cifar100 data/nn_embedding.pt \\
        --prepare '{"standin_seed": 1}' --split '{"train_fraction": 0.2}' --steps 200
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.params import parse_params  # noqa: E402
from pipeline.core.registry import DATASETS  # noqa: E402
from pipeline.engine.training import train_run  # noqa: E402

PREFIX = "net.backbone."  # the backbone's keys in the primary network's state (Standardized(ImageClassifier))


@click.command()
@click.argument("dataset")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--prepare", "prepare", default="{}", help="JSON overrides of datasets.<dataset>.prepare")
@click.option("--split", "split", default="{}", help="JSON overrides of datasets.<dataset>.split")
@click.option("--steps", default=200, show_default=True)
@click.option("--seed", default=0, show_default=True)
def main(dataset: str, out: Path, prepare: str, split: str, steps: int, seed: int) -> None:
    torch.set_num_threads(1)
    params = parse_params({"dataset": dataset, "method": "stl", "seeds": [seed], "datasets": {dataset: {
        "prepare": json.loads(prepare), "split": json.loads(split), "train": {"steps": steps}}}})
    ds = DATASETS.get(dataset)(params.profile.model)
    folder = Path(tempfile.mkdtemp(prefix=f"pretrain_{dataset}_"))
    ds.prepare(params.dataset_config, folder)
    data = ds.load(folder)
    splits = ds.make_splits(data, params.split)
    result = train_run(ds, data, splits, params, seed, device=torch.device("cpu"))
    state = {k[len(PREFIX):]: v for k, v in result.model_state.items() if k.startswith(PREFIX)}
    if not state:
        raise click.ClickException(f"{dataset}'s primary network has no {PREFIX}* weights to save")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    click.echo(f"wrote {out}: {len(state)} tensors of the {params.profile.model.backbone} backbone")


if __name__ == "__main__":
    main()
