"""Live logging of a training run, written while it trains (read by `dvc plots`, `dvc exp show`, a user).

Per seed, with dvclive's standard layout under ``reports/live/seed_<s>/`` (``LIVE``):

- ``plots/metrics/train/loss/<task>.tsv``: each task's τ-scaled loss, the mean over the steps since the
  previous logged step (``step  <task>``);
- ``plots/metrics/train/weight/<task>.tsv``: each task's effective weight ∂L_T/∂ℓ_j at the logged step
  (what history.json records as ``weights``); methods without weights log none;
- ``plots/metrics/val/main_loss.tsv`` (and ``val/main_metric.tsv`` with ``select_by: val_metric``);
- ``plots/metrics/method/<key>.tsv``: the method's own diagnostics at the steps it logs them (the
  hypergradient norm, MAXL's gradient cosine, the label entropy, ...);
- ``metrics.json``: dvclive's latest values of that seed (not a DVC metric: it has a column per task).

Across seeds, the long-format files ``reports/live/{task_loss,task_weight,val_loss}.tsv`` (``step``,
``value``, ``series``: one curve per task and seed, or per seed) feed the `dvc plots` definitions in
dvc.yaml, whose file names cannot depend on the seeds or the tasks. And ``reports/live/metrics.json``
(``LIVE_METRICS``, a top-level metric in dvc.yaml), the one DVC metric of live logging: ``live.seed``,
``live.step``, ``live.main_loss``, ``live.val_loss`` of the latest logged step, in that order (four
`dvc exp show` columns, whatever the seeds and tasks).

Logged steps: the first, every ``train.log_every`` and the last (the steps history.json records);
validation at every ``train.eval_every``. Everything is written as soon as its step is logged (appended and
flushed), so the files grow during training. Only values the run computed anyway are read: logging never
changes a random draw or a result.

A resumed run (``pipeline.engine.checkpoint``) rebuilds the files from what the checkpoint recorded (``state``,
``restore``): every step logged up to the checkpoint, once, whatever an interrupted run wrote after it.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

from pipeline.core.io import write_text

LIVE = Path("reports/live")
LIVE_METRICS = Path("reports/live/metrics.json")
COMBINED = ("task_loss", "task_weight", "val_loss")


def reset(live_dir: Path | str = LIVE, metrics_path: Path | str | None = LIVE_METRICS) -> None:
    """Remove an earlier run's series (its seeds may differ from this run's)."""
    shutil.rmtree(live_dir, ignore_errors=True)
    if metrics_path is not None:
        Path(metrics_path).unlink(missing_ok=True)


def start_combined(live_dir: Path | str = LIVE) -> None:
    """The cross-seed files with their header, written once before several processes append to them."""
    Path(live_dir).mkdir(parents=True, exist_ok=True)
    for name in COMBINED:
        path = Path(live_dir) / f"{name}.tsv"
        if not path.exists():
            path.write_text("step\tvalue\tseries\n")


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class LiveLogger:
    """The live series of one seed's run (see the module doc). ``train_run`` calls :meth:`train_step` every
    step and :meth:`validation` at every evaluation; :meth:`close` at the end. ``log_every``: ``train_run``
    sets it to ``train.log_every``."""

    def __init__(self, seed: int, task_names: Sequence[str], steps: int, log_every: int,
                 live_dir: Path | str = LIVE, metrics_path: Path | str | None = LIVE_METRICS) -> None:
        from dvclive import Live

        self.seed, self.steps, self.log_every = seed, steps, max(1, int(log_every))
        self.task_names = list(task_names)
        self.dir = Path(live_dir)
        self.metrics_path = Path(metrics_path) if metrics_path is not None else None
        self.dir.mkdir(parents=True, exist_ok=True)
        # dvclive writes its files only: no dvc.yaml edits, no experiment of its own, no report, no Studio
        self.live = Live(dir=str(self.dir / f"seed_{seed}"), dvcyaml=None, save_dvc_exp=False, report=None,
                         resume=False)
        self._sum: Tensor | None = None
        self._count = 0
        self._latest: dict[str, Any] = {"seed": seed, "step": 0, "main_loss": None, "val_loss": None}
        # every logged event, as plain values, so that a resumed run rewrites exactly these (``restore``)
        self._events: list[dict[str, Any]] = []

    def due(self, step: int) -> bool:
        return step == 1 or step % self.log_every == 0 or step == self.steps

    def _names(self, count: int) -> list[str]:
        names = self.task_names[:count]
        return names + [f"task_{j}" for j in range(len(names), count)]  # generated tasks beyond the given ones

    def train_step(self, step: int, task_losses: Tensor, weights: Sequence[float] | None) -> None:
        """``task_losses``: this step's per-task losses [T] (detached; summed on their device, read at a
        logged step only)."""
        task_losses = task_losses.detach()
        self._sum = task_losses.clone() if self._sum is None else self._sum + task_losses
        self._count += 1
        if not self.due(step):
            return
        losses = (self._sum / self._count).cpu().tolist()
        self._sum, self._count = None, 0
        self._write_train(step, losses, None if weights is None else [float(w) for w in weights])

    def _write_train(self, step: int, losses: list[float], weights: list[float] | None) -> None:
        self._events.append({"kind": "train", "step": step, "losses": losses, "weights": weights})
        self.live.step = step
        rows: dict[str, list[str]] = {"task_loss": [], "task_weight": []}
        for name, value in zip(self._names(len(losses)), losses):
            self.live.log_metric(f"train/loss/{name}", value)
            rows["task_loss"].append(self._row(step, value, f"{name} · seed {self.seed}"))
        if weights:
            for name, value in zip(self._names(len(weights)), weights):
                self.live.log_metric(f"train/weight/{name}", float(value))
                rows["task_weight"].append(self._row(step, value, f"{name} · seed {self.seed}"))
        self._latest.update(step=step, main_loss=_number(losses[0]) if losses else None)
        self._flush(rows)

    def validation(self, step: int, val_loss: float, val_metric: float | None = None) -> None:
        self._events.append({"kind": "val", "step": step, "val_loss": float(val_loss),
                             "val_metric": None if val_metric is None else float(val_metric)})
        self.live.step = step
        self.live.log_metric("val/main_loss", float(val_loss))
        if val_metric is not None:
            self.live.log_metric("val/main_metric", float(val_metric))
        self._latest.update(step=step, val_loss=_number(val_loss))
        self._flush({"val_loss": [self._row(step, val_loss, f"seed {self.seed}")]})

    def method_log(self, step: int, logs: dict[str, Any]) -> None:
        """The method's own diagnostics (``grad_cosine``, ``label_entropy``, ``hypergrad_norm``, ...) as
        ``method/<key>`` series, at the steps the method logs them."""
        scalars = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not scalars:
            return
        self._events.append({"kind": "method", "step": step, "logs": {k: float(v) for k, v in scalars.items()}})
        self.live.step = step
        for key, value in scalars.items():
            self.live.log_metric(f"method/{key}", float(value))

    @staticmethod
    def _row(step: int, value: float, series: str) -> str:
        return f"{step}\t{float(value)!r}\t{series}\n"

    def _flush(self, rows: dict[str, list[str]]) -> None:
        for name, lines in rows.items():
            if not lines:
                continue
            path = self.dir / f"{name}.tsv"
            new = not path.exists()
            with open(path, "a") as fh:
                if new:
                    fh.write("step\tvalue\tseries\n")
                fh.writelines(lines)
        self.live.make_summary()
        if self.metrics_path is not None:
            # in this order (not write_json's sorted keys): DVC shows a file's columns in its key order
            write_text(self.metrics_path, json.dumps({"live": self._latest}, indent=2) + "\n")

    def close(self) -> None:
        self.live.make_summary()

    def state(self) -> dict[str, Any]:
        """Everything logged so far (plain lists and dicts) and the losses summed since the last logged step."""
        return {"events": [dict(e) for e in self._events], "count": self._count,
                "sum": None if self._sum is None else self._sum.detach().cpu().clone()}

    def restore(self, state: dict[str, Any], device: Any = None) -> None:
        """Write the logged events of ``state`` again, in their order, into this (fresh) logger's files."""
        for event in state["events"]:
            if event["kind"] == "train":
                self._write_train(event["step"], event["losses"], event["weights"])
            elif event["kind"] == "val":
                self.validation(event["step"], event["val_loss"], event["val_metric"])
            else:
                self.method_log(event["step"], event["logs"])
        self._count = state["count"]
        self._sum = None if state["sum"] is None else state["sum"].to(device or "cpu")


def read_series(path: Path | str) -> list[tuple[int, float]]:
    """(step, value) rows of one dvclive series file."""
    lines = Path(path).read_text().splitlines()[1:]
    return [(int(float(a)), float(b)) for a, b in (line.split("\t")[-2:] for line in lines if line.strip())]


def read_metrics(path: Path | str = LIVE_METRICS) -> dict[str, Any]:
    return json.loads(Path(path).read_text())["live"]

