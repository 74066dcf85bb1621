"""DVC stage `validate`: the whole params.yaml checked before any other stage does work.

Every other stage depends on its marker ``data/params_valid.txt``, so ``dvc repro`` and ``dvc exp run`` run
it first whenever params.yaml (or the schema's code) changed, even when no other stage would run: a typo or a
bad value anywhere (an unselected dataset included) stops the pipeline here, with the key named. The marker's
content is constant, so a valid edit re-runs only the stages whose own params changed (DVC compares its hash).

Under `dvc exp run` (DVC sets ``DVC_EXP_NAME``), DVC has already written the run's ``-S`` values into params.yaml
and would leave them there when the run fails. A refused file is therefore moved to ``params.rejected.yaml``
(nothing is lost) and params.yaml is put back as it was. DVC does not keep that file, so it is the nearer to the
refused one (fewest differing keys: -S changed only the keys it names) of two candidates: the last file this stage
accepted (the workspace after a successful experiment) and the experiment's baseline commit's (a workspace reset
to it since). A plain `dvc repro` never touches the user's params.yaml.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import click
import yaml

from pipeline.config.params import ParamsError, load_params

MARKER = Path("data/params_valid.txt")
CONTENT = "valid\n"
LAST_VALID = Path(".dvc/tmp/params.last_valid.yaml")  # untracked: DVC's own temporary folder
REJECTED = Path("params.rejected.yaml")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _leaves(tree: object, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    if isinstance(tree, dict) and tree:
        return {key: value for k, v in tree.items() for key, value in _leaves(v, (*prefix, str(k))).items()}
    return {prefix: tree}


def _keys_differing(a: str, b: str) -> float:
    """How many keys (leaves) two params files set differently; infinite when either does not parse."""
    try:
        left, right = _leaves(yaml.safe_load(a) or {}), _leaves(yaml.safe_load(b) or {})
    except yaml.YAMLError:
        return float("inf")
    missing = object()
    return sum(left.get(k, missing) != right.get(k, missing) for k in left.keys() | right.keys())


def _baseline_params(params_path: Path) -> str | None:
    baseline = os.environ.get("DVC_EXP_BASELINE_REV")
    if not baseline:
        return None
    proc = subprocess.run(["git", "show", f"{baseline}:{params_path.as_posix()}"], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def params_before_experiment(params_path: Path, last_valid: Path = LAST_VALID) -> str | None:
    """params.yaml as it was before this `dvc exp run` applied its -S values (see the module's docstring): of the
    last accepted file and the baseline commit's (``DVC_EXP_BASELINE_REV``), the one that differs from the
    refused file in the fewest keys, the last accepted on a tie; None when neither is known."""
    candidates = [text for text in (last_valid.read_text() if last_valid.is_file() else None,
                                    _baseline_params(params_path)) if text is not None]
    if not candidates:
        return None
    refused = params_path.read_text()
    return min(candidates, key=lambda text: _keys_differing(text, refused))


def write_marker(path: Path = MARKER) -> None:
    """Write the constant marker (atomically; untouched when it already holds the content)."""
    if not (path.is_file() and path.read_text() == CONTENT):
        _write_atomic(path, CONTENT)


@click.command()
@click.option("--params", "params_path", type=click.Path(path_type=Path), default=Path("params.yaml"),
              show_default=True, help="parameters file")
@click.option("--marker", type=click.Path(path_type=Path), default=MARKER, show_default=True,
              help="written (constant content) when the file is valid")
def main(params_path: Path, marker: Path) -> None:
    try:
        load_params(params_path)
    except ParamsError as err:
        message = str(err)
        before = params_before_experiment(params_path) if os.environ.get("DVC_EXP_NAME") else None
        if before is not None and before != params_path.read_text():
            _write_atomic(REJECTED, params_path.read_text())
            _write_atomic(params_path, before)
            message += (f"\n{params_path} is back as it was before this `dvc exp run`; the refused file is "
                        f"{REJECTED}")
        raise click.ClickException(message) from None
    _write_atomic(LAST_VALID, params_path.read_text())
    write_marker(marker)
    click.echo(f"{params_path}: valid")


if __name__ == "__main__":
    main()
