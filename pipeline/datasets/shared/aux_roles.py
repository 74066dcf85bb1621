"""What each auxiliary task of a generated stand-in is for: ``aux_roles.json`` beside its prepared data.

Only generated data has roles (its generator knows what each auxiliary is); real data never does, so a
dataset's ``load`` sets ``TaskData.meta["aux_roles"]`` only when the file is there.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from pipeline.datasets.shared.base import DataError

AUX_ROLES_FILE = "aux_roles.json"  # stand-ins only: {auxiliary task: role}, beside the prepared data
AUX_ROLES = ("helpful", "irrelevant", "harmful")


def write_aux_roles(folder: Path, roles: dict[str, str]) -> None:
    """Write a stand-in's ``{auxiliary task: "helpful" | "irrelevant" | "harmful"}`` beside its prepared data."""
    unknown = sorted(set(roles.values()) - set(AUX_ROLES))
    if unknown:
        raise ValueError(f"unknown auxiliary roles {unknown}; known: {', '.join(AUX_ROLES)}")
    (Path(folder) / AUX_ROLES_FILE).write_text(json.dumps(roles, indent=1) + "\n")


def read_aux_roles(folder: Path, aux_names: Sequence[str]) -> dict[str, str] | None:
    """The roles written by ``write_aux_roles`` (None without the file), checked against the auxiliaries."""
    path = Path(folder) / AUX_ROLES_FILE
    if not path.is_file():
        return None
    try:
        roles = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not readable JSON: {err}") from None
    if not isinstance(roles, dict) or set(roles) != set(aux_names) or not set(roles.values()) <= set(AUX_ROLES):
        raise DataError(f"{path}: expected one role ({', '.join(AUX_ROLES)}) for each auxiliary task "
                        f"{list(aux_names)[:5]}...")
    return {name: roles[name] for name in aux_names}
