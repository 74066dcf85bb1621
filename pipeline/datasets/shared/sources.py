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
