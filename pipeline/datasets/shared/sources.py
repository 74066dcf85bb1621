"""Where a dataset's raw files come from: its procedural stand-in, or the user's folder in a real format.

Every dataset with a real format has ``datasets.<name>.prepare.source`` (``standin`` or a format) and
``root``, the user's raw folder. ``root`` defaults to ``data/raw/<name>``, a folder kept in git with a README
saying what goes there; dvc.yaml makes ``root`` a dependency of ``prepare@<name>``, so a changed label in a
user's folder re-runs that dataset's preparation (a relative path keeps the experiment portable).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets.base import DataError

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
        raise DataError(f"{key} = {root}: holds no data yet; put {expected} there, or set {key} to your copy")
    return path


def require_root(source: str, root: str | None, given: set[str], name: str, expected: str) -> None:
    """Params check of a real ``source``: ``root`` must be written out. Its default (``data/raw/<name>``) only
    names the placeholder folder dvc.yaml tracks; a section that picks a real format without a root is a
    mistake, caught at parse time. Whether the folder holds the data is checked when preparing
    (``source_root``). ``given``: the keys the user wrote (``model_fields_set``)."""
    if source != STANDIN and (not root or "root" not in given):
        raise ValueError(f"root is required when source is {source!r}: set datasets.{name}.prepare.root to "
                         f"{expected} (e.g. {default_root(name)}, once the files its README.md describes are there)")

