"""What every stage entry point shares: validated params first, and one clear line for any bad input."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import click

from pipeline.config import ParamsError, load_params
from pipeline.datasets.base import DataError

EXPECTED_ERRORS = (ParamsError, DataError, FileNotFoundError, ValueError, FloatingPointError)


def stage(func: Callable[..., None]) -> Callable[..., None]:
    """Wrap a stage body: validate ``--params`` before any work, turn expected failures into one message."""

    @click.option("--params", "params_path", type=click.Path(path_type=Path), default=Path("params.yaml"),
                  show_default=True, help="parameters file")
    @functools.wraps(func)
    def wrapper(params_path: Path, **kwargs: Any) -> None:
        try:
            params = load_params(params_path)
            func(params, **kwargs)
        except EXPECTED_ERRORS as err:
            raise click.ClickException(str(err)) from None

    return wrapper
