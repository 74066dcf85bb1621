"""What every stage entry point shares: validated params first, and one clear line for any bad input.

Around the stage body the decorator also: puts back what an interrupted earlier run left (stale temporaries
removed, a folder swap cut between its two renames undone: ``pipeline.core.io.recover``); fixes torch's intra-op
thread count to ``params.threads``, so results do not depend on the machine's core count; and turns
SIGTERM/SIGINT into ``pipeline.core.io.Interrupted``, so the ``finally`` blocks of ``atomic_dir``/``atomic_path``
remove the temporaries before the process exits with 128 + the signal number.
"""
from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import click
import torch

from pipeline.config.params import ParamsError, load_params
from pipeline.datasets.shared.base import DataError
from pipeline.core import distributed
from pipeline.core.io import Interrupted, interrupt_handler, recover, reset_interrupts
from pipeline.core.paths import swapped_outputs

EXPECTED_ERRORS = (ParamsError, DataError, FileNotFoundError, PermissionError, ValueError, FloatingPointError)
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def recover_outputs() -> list[str]:
    """Clean up after an interrupted earlier run of any stage (see ``pipeline.core.io.recover``)."""
    done: list[str] = []
    for target in swapped_outputs():
        done += recover(target)
    return done


def stage(func: Callable[..., None]) -> Callable[..., None]:
    """Wrap a stage body: validate ``--params`` before any work, turn expected failures into one message."""

    @click.option("--params", "params_path", type=click.Path(path_type=Path), default=Path("params.yaml"),
                  show_default=True, help="parameters file")
    @functools.wraps(func)
    def wrapper(params_path: Path, **kwargs: Any) -> None:
        previous_threads = torch.get_num_threads()
        previous_handlers = {}
        reset_interrupts()
        try:
            for signum in HANDLED_SIGNALS:
                previous_handlers[signum] = signal.signal(signum, interrupt_handler)
        except ValueError:  # not the main thread (an embedding caller): no handlers, cleanup on exceptions only
            pass
        try:
            params = load_params(params_path)
            if distributed.launched_rank() == 0:  # under torchrun, only the process that writes cleans up
                for line in recover_outputs():
                    click.echo(f"{line} (left by an interrupted earlier run)", err=True)
            torch.set_num_threads(params.threads)
            func(params, **kwargs)
        except EXPECTED_ERRORS as err:
            raise click.ClickException(str(err)) from None
        except Interrupted as err:
            click.echo(f"Error: {err}; temporary outputs removed, the previous outputs are unchanged", err=True)
            sys.exit(128 + err.signum)
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            reset_interrupts()
            torch.set_num_threads(previous_threads)

    return wrapper
