"""Where a dataset's raw files come from: its procedural stand-in, or the user's folder in a real format.

Every dataset with a real format has ``datasets.<name>.prepare.source`` (``standin`` or a format) and
``root``, the raw folder: ``data/raw/<name>``, a folder kept in git with a README saying what goes there.
dvc.yaml makes ``data/raw/<dataset>`` a dependency of ``prepare``, so a changed label in a user's files re-runs
the preparation; params.yaml may not point ``root`` elsewhere (DVC would not see changes there): users put their
files in that folder, link it to their copy, or ``dvc add``/``dvc import`` it.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets.shared.base import DataError

STANDIN = "standin"
RAW = Path("data/raw")


def default_root(name: str) -> str:
    """``root``'s default for dataset ``name``: ``data/raw/<name>``, relative to the repository root."""
    return (RAW / name).as_posix()


def source_root(name: str, source: str, root: str | None, expected: str) -> Path:
    """The user's raw folder of dataset ``name`` for a non-stand-in ``source``; ``DataError`` naming the key and
    the path when it is not a folder, or still holds only the placeholder README (``expected`` says what
    belongs there)."""
    key = f"datasets.{name}.prepare.root"
    if not root:
        raise DataError(f"{key}: required when source is {source!r} ({expected})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{key} = {root}: not a folder (it should hold {expected})")
    if {p.name for p in path.iterdir()} <= {"README.md", ".gitkeep"}:
        raise DataError(f"{root} holds no data yet (datasets.{name}.prepare.source is {source!r}): put {expected} "
                        f"there, or link the folder to your copy (see {root}/README.md)")
    return path


def require_root(source: str, root: str | None, given: set[str], name: str, expected: str) -> None:
    """Params check of a real ``source``: it needs a raw folder (``root``, by default ``data/raw/<name>``, the
    folder dvc.yaml tracks). Whether the folder holds the data is checked when preparing (``source_root``).
    ``given``: the keys the user wrote (``model_fields_set``)."""
    if source != STANDIN and not root:
        raise ValueError(f"root is required when source is {source!r}: put {expected} in {default_root(name)}")
