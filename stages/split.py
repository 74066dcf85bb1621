"""DVC stage `split`: disjoint train / aux / val / test index files for the selected dataset."""
import click

from pipeline.config.stage import stage
from pipeline.core.registry import DATASETS
from pipeline.core.io import atomic_dir, sha256_file, verify_manifest, write_json
from pipeline.core.paths import SPLITS, prepared_dir
from pipeline.datasets.shared.splits import save_splits


@click.command()
@stage
def main(params) -> None:
    dataset = DATASETS.get(params.dataset)()
    folder = prepared_dir(params.dataset)
    verify_manifest(folder)
    data = dataset.load(folder)
    splits = dataset.make_splits(data, params.split)
    with atomic_dir(SPLITS) as tmp:
        save_splits(tmp, splits)
        write_json(tmp / "info.json", {
            "dataset": params.dataset,
            "prepared_manifest_sha256": sha256_file(folder / "manifest.json"),
            "sizes": {k: int(len(v)) for k, v in splits.items()},
        })
    click.echo("split " + ", ".join(f"{k}={len(v)}" for k, v in splits.items()))


if __name__ == "__main__":
    main()
