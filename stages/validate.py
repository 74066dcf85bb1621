"""DVC stage `validate`: the whole params.yaml checked before any other stage does work.

Every other stage depends on its marker ``data/params_valid.txt``, so ``dvc repro`` and ``dvc exp run`` run
it first whenever params.yaml (or the schema's code) changed, even when no other stage would run: a typo or a
bad value anywhere (an unselected dataset included) stops the pipeline here, with the key named. The marker's
content is constant, so a valid edit re-runs only the stages whose own params changed (DVC compares its hash).
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from pipeline.config import ParamsError, load_params

MARKER = Path("data/params_valid.txt")
CONTENT = "valid\n"


def write_marker(path: Path = MARKER) -> None:
    """Write the constant marker (atomically; untouched when it already holds the content)."""
    if path.is_file() and path.read_text() == CONTENT:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(CONTENT)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@click.command()
@click.option("--params", "params_path", type=click.Path(path_type=Path), default=Path("params.yaml"),
              show_default=True, help="parameters file")
@click.option("--marker", type=click.Path(path_type=Path), default=MARKER, show_default=True,
              help="written (constant content) when the file is valid")
def main(params_path: Path, marker: Path) -> None:
    try:
        load_params(params_path)
    except ParamsError as err:
        raise click.ClickException(str(err)) from None
    write_marker(marker)
    click.echo(f"{params_path}: valid")


if __name__ == "__main__":
    main()
