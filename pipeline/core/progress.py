"""Progress a user can see while a stage works: plain lines where no progress bar can be drawn.

On a terminal, tqdm draws the bar (training puts the losses in it). Where stderr is not a terminal (under
`dvc queue start`, read back with `dvc queue logs`; a CI log; a redirect) tqdm draws nothing, so
:class:`ProgressLines` prints one plain line every ``AUXBENCH_PROGRESS_SECONDS`` seconds (default 10) and,
if ``AUXBENCH_PROGRESS_STEPS`` is set, every that many steps, plus the first and the last step. The cadence
reads a clock and a counter only: what is printed never changes what is computed.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")

SECONDS_ENV = "AUXBENCH_PROGRESS_SECONDS"
STEPS_ENV = "AUXBENCH_PROGRESS_STEPS"
DEFAULT_SECONDS = 10.0


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number (seconds or steps between progress lines)") from None
    if value < 0:
        raise ValueError(f"{name}={text!r} must be 0 (off) or more")
    return value


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


class ProgressLines:
    """Plain progress lines for a loop of ``total`` steps, printed only where ``stream`` is not a terminal
    (``force=True`` prints on a terminal too). ``every_seconds``/``every_steps`` default to the environment
    variables above; 0 turns that trigger off."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, every_seconds: float | None = None,
                 every_steps: int | None = None, clock: Callable[[], float] = time.monotonic,
                 force: bool = False, unit: str = "step") -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_seconds = _env_number(SECONDS_ENV, DEFAULT_SECONDS) if every_seconds is None else every_seconds
        self.every_steps = int(_env_number(STEPS_ENV, 0) if every_steps is None else every_steps)
        self.clock = clock
        self.enabled = force or not is_terminal(self.stream)
        self._last_time = clock()

    def due(self, step: int) -> bool:
        if not self.enabled:
            return False
        if step in (1, self.total):
            return True
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_seconds) and self.clock() - self._last_time >= self.every_seconds

    def update(self, step: int, **values: Any) -> bool:
        """Print ``<label>: step s/total, k v, ...`` (``<label>: n/total <unit>`` for another unit) if a line
        is due; returns whether one was printed."""
        if not self.due(step):
            return False
        count = f"{self.unit} {step}/{self.total}" if self.unit == "step" else f"{step}/{self.total} {self.unit}"
        parts = [count] + [f"{k} {_format(v)}" for k, v in values.items()]
        print(f"{self.label}: " + ", ".join(parts), file=self.stream, flush=True)
        self._last_time = self.clock()
        return True


def counted(items: Iterable[T], label: str, total: int, unit: str = "files",
            size: Callable[[T], int] | None = None) -> Iterator[T]:
    """``items``, counted where a user waits (preparing a dataset): a tqdm bar on a terminal, plain lines
    (``ProgressLines``) elsewhere. ``size(item)``: how many ``unit`` an item stands for (a chunk of images;
    default 1). Only counts: the items are yielded unchanged."""
    stream = sys.stderr
    if is_terminal(stream):
        from tqdm import tqdm

        with tqdm(desc=label, total=total, unit=f" {unit}", leave=False) as bar:
            for item in items:
                yield item
                bar.update(size(item) if size else 1)
        return
    lines = ProgressLines(label, total, stream=stream, unit=unit, every_steps=0 if size else None)
    done = 0
    for item in items:
        yield item
        done += size(item) if size else 1
        lines.update(done)
