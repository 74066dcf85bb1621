"""DVC stage `prepare@<dataset>`: generate or ingest one dataset into data/prepared/<dataset>/ with a manifest."""
import click

from pipeline.cli import stage
from pipeline.registry import DATASETS
from pipeline.io import atomic_dir, write_manifest
from pipeline.paths import prepared_dir


@click.command()
@click.option("--dataset", "name", required=True, help="a dataset registered in pipeline.datasets")
@stage
def main(params, name: str) -> None:
    dataset = DATASETS.get(name)()
    with atomic_dir(prepared_dir(name)) as tmp:
        dataset.prepare(getattr(params.datasets, name).prepare, tmp)
        dataset.load(tmp)  # what was written must read back
        hashes = write_manifest(tmp)
    click.echo(f"prepared {name}: {len(hashes)} files in {prepared_dir(name)}")


if __name__ == "__main__":
    main()
