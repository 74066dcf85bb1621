"""DVC stage `prepare`: generate or ingest the selected dataset into data/prepared/<dataset>/ with a manifest.

``--dataset`` prepares another registered dataset outside DVC (e.g. to look at it), with its params.yaml settings.
"""
import click

from pipeline.config.stage import stage
from pipeline.core.registry import DATASETS
from pipeline.core.io import atomic_dir, write_manifest
from pipeline.core.paths import prepared_dir


@click.command()
@click.option("--dataset", "name", default=None, help="a registered dataset (default: params.yaml's dataset)")
@stage
def main(params, name: str | None) -> None:
    name = name or params.dataset
    dataset = DATASETS.get(name)()
    with atomic_dir(prepared_dir(name)) as tmp:
        dataset.prepare(getattr(params.datasets, name).prepare, tmp)
        dataset.load(tmp)  # what was written must read back
        hashes = write_manifest(tmp)
    click.echo(f"prepared {name}: {len(hashes)} files in {prepared_dir(name)}")


if __name__ == "__main__":
    main()
