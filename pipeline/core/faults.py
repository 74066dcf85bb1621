"""Non-finite values during training, traced to their cause and named by the key (or file) that sets it.

The trainer hands W's training loss and the per-task losses of every step to ``TrainingGuard.watch``, which
keeps a finiteness flag on the device (no host synchronisation), and calls ``check`` at every logged step
(``train.log_every``), at checkpoints and at the end: one transfer for all the steps since the last check, before
that step's W update. A fault is therefore detected at most ``log_every - 1`` steps after it appears, and reported
at the step it appeared, diagnosed from that step's batch (the guard keeps the watched steps' batches until the
check). Every outer batch's losses are checked where they are drawn (one sync per outer batch); any other failure
(an outer update, validation) first reports an earlier watched fault, so the first cause is the one named. When one is non-finite, ``TrainingGuard`` looks for the cause in this order and raises ``NumericalFault``
(a ``FloatingPointError``: the stage wrapper prints it as one line), naming the step:

1. the data: non-finite inputs or targets in the batch's rows -> the prepared folder, the rows and the tasks;
2. a method's own parameters, which each role declares with ``fault_suspects(keys, step)`` (``Suspect``):
   non-finite, or grown a million-fold since step 1 -> the key that moves them (e.g. ``methods.bilevel.lr``,
   ``methods.gradnorm.lr``, ``methods.uncertainty.init_log_variance``, ``methods.labels.lr``);
3. W itself: non-finite, or grown a million-fold (diverged) -> ``datasets.<dataset>.train.lr`` (and momentum,
   weight decay where set).

Outer updates check their own results where they happen (``HyperOptimizer`` for φ and its hypergradient,
MAXL's look-ahead for θ2); the trainer adds the step.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import Tensor

# A parameter that grew by more than this factor since step 1 (floor 1) has diverged, though still finite.
GROWTH = 1e6


class NumericalFault(FloatingPointError):
    """A non-finite value in training, with its cause named (the step, and the key or file to change)."""


@dataclass
class Suspect:
    """Parameters (or values derived from them) of a method role that may make W's loss non-finite."""

    what: str  # e.g. "φ (the auxiliary network)"
    tensors: Sequence[Tensor]
    key: str  # what to change, naming the key(s)


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every floating tensor is finite (one synchronisation for all of them)."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def max_abs(tensors: Iterable[Tensor]) -> float:
    values = [float(t.detach().abs().max()) for t in tensors if t.numel() and t.is_floating_point()]
    return max(values, default=0.0)


@contextmanager
def overflow_named(what: str, key: str) -> Iterator[None]:
    """An optimiser's step whose rate does not fit the parameters' dtype (torch raises a RuntimeError about
    overflow, e.g. lr = 1e39 in float32) fails as a ``FloatingPointError`` naming ``key``."""
    try:
        yield
    except RuntimeError as err:
        if "overflow" not in str(err):
            raise
        raise FloatingPointError(f"{what} overflows its parameters' float type ({err}): {key}") from None


def _rows(rows: Sequence[int], limit: int = 8) -> str:
    rows = list(rows)
    shown = ", ".join(str(r) for r in rows[:limit])
    return f"[{shown}, …; {len(rows)} rows]" if len(rows) > limit else f"[{shown}]"


class FaultKeys:
    """The params.yaml keys of one run, for messages (works with validated params and with test stand-ins)."""

    def __init__(self, params: Any, dataset: str) -> None:
        self.params = params
        self.dataset = dataset

    def train(self, key: str) -> str:
        return f"datasets.{self.dataset}.train.{key}"

    def method(self, section: str, key: str) -> str:
        """``methods.<section>.<key>``, or its per-dataset override when that is what set it."""
        overrides = getattr(getattr(self.params, "profile", None), "methods", None)
        if isinstance(overrides, dict) and key in (overrides.get(section) or {}):
            return f"datasets.{self.dataset}.methods.{section}.{key}"
        return f"methods.{section}.{key}"

    def optimiser(self) -> str:
        """W's optimiser keys: the learning rate, and momentum and weight decay where they are set."""
        cfg = getattr(self.params, "train", None)
        keys = [self.train("lr")]
        if cfg is not None and getattr(cfg, "optimizer", "") == "sgd" and getattr(cfg, "momentum", 0):
            keys.append(f"{self.train('momentum')} ({cfg.momentum:g})")
        if cfg is not None and getattr(cfg, "weight_decay", 0):
            keys.append(f"{self.train('weight_decay')} ({cfg.weight_decay:g})")
        lr = f" (now {cfg.lr:g})" if cfg is not None and hasattr(cfg, "lr") else ""
        return f"lower {keys[0]}{lr}" + (f", or {' or '.join(keys[1:])}" if len(keys) > 1 else "")

    @property
    def prepared(self) -> Path:
        from pipeline.core.paths import prepared_dir

        return prepared_dir(self.dataset)


class TrainingGuard:
    """The checks of one training run: ``watch`` every W step and ``check`` at logged steps, ``check_losses`` on
    outer batches, ``validation`` and ``role_failed``; each raises ``NumericalFault`` with the cause named."""

    def __init__(self, dataset: Any, data: Any, method: Any, model: torch.nn.Module, params: Any, seed: int) -> None:
        self.data = data
        self.method = method
        self.model = model
        self.keys = FaultKeys(params, dataset.name)
        self.label = f"{getattr(params, 'method', method.name)} seed {seed}"
        self.tasks = method.loss_names(data.task_names)
        self.w_start = max_abs(model.parameters())
        self.method_start: dict[str, float] = {}
        self.last_outer_step: int | None = None
        # watched W steps not yet checked: (step, batch, per-task losses, [L_T, Σ losses] on the device)
        self._watched: list[tuple[int, Any, Tensor, Tensor]] = []

    def state(self) -> dict[str, Any]:
        """What a resumed run needs (``check`` first: nothing watched is pending)."""
        return {"w_start": self.w_start, "method_start": dict(self.method_start),
                "last_outer_step": self.last_outer_step}

    def load_state(self, state: dict[str, Any]) -> None:
        self.w_start = state["w_start"]
        self.method_start = dict(state["method_start"])
        self.last_outer_step = state["last_outer_step"]

    # -- the checks ---------------------------------------------------------------------------------------

    def start(self, step: int = 1) -> None:
        """Record the method's parameters' sizes at step 1 (after its calibration), to tell growth later."""
        self.method_start = {s.what: max_abs(s.tensors) for s in self.suspects(step)}

    def watch(self, step: int, batch: Any, train_loss: Tensor, losses: Tensor) -> None:
        """W's step ``step``: L_T and the sum of the per-task losses, kept on the device until ``check``. The sum
        is non-finite iff a loss is, or if it overflows float, which only losses near 1e38 do: a run that has
        diverged anyway."""
        values = torch.stack([train_loss.detach().float(), losses.detach().float().sum()])
        self._watched.append((step, batch, losses.detach(), values))

    def check(self) -> None:
        """The watched steps since the last check, in one transfer: the first non-finite one fails the run."""
        if not self._watched:
            return
        watched, self._watched = self._watched, []
        values = torch.stack([v for *_, v in watched]).cpu()
        bad = (~torch.isfinite(values)).any(1).nonzero()
        if len(bad):
            step, batch, losses, _ = watched[int(bad[0])]
            train, total = values[int(bad[0])].tolist()
            if not math.isfinite(train):
                self.fail(step, f"W's training loss is {train}", batch, losses)
            self.fail(step, f"the per-task losses are non-finite (their sum is {total})", batch, losses)

    def _earlier_fault(self) -> None:
        """Before reporting a later failure: an unchecked watched step that was already non-finite."""
        self.check()

    def optimiser_step(self, step: int, optimizer: torch.optim.Optimizer, scaler: Any = None) -> None:
        """W's optimiser step (through fp16's gradient ``scaler`` when given); a rate that overflows W's float
        type names the key."""
        try:
            with overflow_named("W's update", self.keys.optimiser()):
                if scaler is not None:
                    scaler.step(optimizer)
                else:
                    optimizer.step()
        except FloatingPointError as err:
            raise NumericalFault(f"{self.label}: at step {step}: {err}") from None

    def check_losses(self, step: int, batch: Any, losses: Tensor, what: str) -> None:
        """An outer batch's per-task losses (one sync, at outer steps only)."""
        if not bool(torch.isfinite(losses.detach()).all()):
            self.fail(step, f"the {what}'s per-task losses are non-finite", batch, losses)

    def validation(self, step: int, value: float, rows: Tensor) -> None:
        if not math.isfinite(value):
            self.fail(step, f"the validation main loss is {value}", None, None, rows=rows, after_update=True)

    def role_failed(self, step: int, err: FloatingPointError, where: str) -> NumericalFault:
        """A method role raised: keep its diagnosis (it names its keys) unless W is the cause."""
        self._earlier_fault()
        if isinstance(err, NumericalFault):
            return err
        cause = None
        if self._w_cause(step, after_update=True) is not None:  # W broke first: φ's settings are not the cause
            cause = self._method_cause(step) or self._w_cause(step, after_update=True)
        return NumericalFault(f"{self.label}: at step {step}, in {where}: {cause or err}")

    # -- the diagnosis ------------------------------------------------------------------------------------

    def fail(self, step: int, what: str, batch: Any, losses: Tensor | None, rows: Tensor | None = None,
             after_update: bool = False) -> None:
        pending = [w for w in self._watched if w[0] <= step]
        if pending:  # a W step up to this one may have been non-finite already: that one is the cause to name
            self._watched = pending
            self.check()
        self._watched = []
        if batch is not None:
            rows = batch.index
        cause = (self._data_cause(rows, getattr(batch, "x", None), getattr(batch, "y", None), losses)
                 or self._method_cause(step)
                 or self._w_cause(step, after_update)
                 or self._unexplained(losses))
        raise NumericalFault(f"{self.label}: {what} at step {step}: {cause}")

    def suspects(self, step: int) -> list[Suspect]:
        found: list[Suspect] = []
        for role in (self.method.combiner, self.method.outer, self.method.generator):
            hook = getattr(role, "fault_suspects", None)
            if hook is not None:
                found.extend(hook(self.keys, step))
        covered = {id(t) for s in found for t in s.tensors}
        joint = [p for p in self.method.joint_parameters() if id(p) not in covered]
        if joint:
            found.append(Suspect(f"{self.method.name}'s parameters trained with W", joint,
                                 self.keys.optimiser()))
        rest = [p for p in self.method.parameters() if id(p) not in covered and all(p is not j for j in joint)]
        if rest:
            section = getattr(self.method.spec, "config_section", None) or self.method.name
            found.append(Suspect(f"{self.method.name}'s parameters", rest, f"check methods.{section}"))
        return found

    def _method_cause(self, step: int) -> str | None:
        for s in self.suspects(step):
            if not all_finite(s.tensors):
                return f"{s.what} are non-finite{self._since(step)}: {s.key}"
        for s in self.suspects(step):
            start, now = self.method_start.get(s.what), max_abs(s.tensors)
            if start is not None and now > GROWTH * max(1.0, start):
                return (f"{s.what} grew from max |·| = {start:.3g} at step 1 to {now:.3g}{self._since(step)}, "
                        f"and the loss overflowed: {s.key}")
        return None

    def _since(self, step: int) -> str:
        return f" (last outer update at step {self.last_outer_step})" if self.last_outer_step else ""

    def _w_cause(self, step: int, after_update: bool) -> str | None:
        w = list(self.model.parameters())
        when = f"after step {step if after_update else step - 1}'s update"
        if not all_finite(w):
            if step == 1 and not after_update:
                return "W's parameters are non-finite at initialisation"
            return f"W's parameters are non-finite {when}: {self.keys.optimiser()}"
        now = max_abs(w)
        if now > GROWTH * max(1.0, self.w_start):
            return (f"W has diverged (max |W| = {now:.3g} {when}, {self.w_start:.3g} at the start): "
                    f"{self.keys.optimiser()}")
        return None

    def _data_cause(self, rows: Tensor | None, x: Tensor | None, y: Tensor | None, losses: Tensor | None
                    ) -> str | None:
        if rows is None:
            return None
        rows = rows.detach().cpu().long()
        inputs, targets = self.data.inputs, self.data.targets
        bad_in = ~torch.isfinite(_float(inputs[rows.to(inputs.device)]).reshape(len(rows), -1)).all(1).cpu()
        t = _float(targets[rows.to(targets.device)]).cpu()
        parts = []
        if bad_in.any():
            parts.append(f"inputs of rows {_rows(rows[bad_in].tolist())}")
        if t.dim() >= 2 and t.shape[1] == len(self.data.task_names):
            finite = torch.isfinite(t.reshape(len(rows), t.shape[1], -1)).all(2)
            for j, name in enumerate(self.data.task_names):
                if not finite[:, j].all():
                    parts.append(f"targets of task '{name}' (column {j}) in rows {_rows(rows[~finite[:, j]].tolist())}")
        else:
            bad_t = ~torch.isfinite(t.reshape(len(rows), -1)).all(1)
            if bad_t.any():
                parts.append(f"targets of rows {_rows(rows[bad_t].tolist())}")
        name = self.keys.dataset
        if parts:
            return (f"the prepared data {self.keys.prepared}/ holds NaN/inf: {'; '.join(parts)} (row numbers of "
                    f"the prepared arrays): fix the data or its datasets.{name}.prepare settings and run "
                    f"`dvc repro prepare`")
        transformed = [(n, v) for n, v in (("inputs", x), ("targets", y)) if v is not None and v.is_floating_point()
                       and not bool(torch.isfinite(v.detach()).all())]
        if transformed:
            return (f"{name}'s batch_transform made non-finite {' and '.join(n for n, _ in transformed)} from the "
                    f"finite rows {_rows(rows.tolist())} of {self.keys.prepared}/")
        return None

    def _unexplained(self, losses: Tensor | None) -> str:
        which = ""
        if losses is not None and losses.dim() >= 2:
            finite = torch.isfinite(losses.detach().reshape(losses.shape[0], losses.shape[1], -1)).all(2).all(0)
            names = [self.tasks[j] if j < len(self.tasks) else f"column {j}" for j in range(len(finite))
                     if not finite[j]]
            which = f" (non-finite losses: {', '.join(names)})" if names else ""
        w = max_abs(self.model.parameters())
        return (f"finite data and parameters gave a non-finite loss{which}, max |W| = {w:.3g}: "
                f"{self.keys.optimiser()}, or check the prepared data {self.keys.prepared}/ for extreme values")


def _float(t: Tensor) -> Tensor:
    return t if t.is_floating_point() else t.float()
