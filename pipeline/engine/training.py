"""One training run: a method, a dataset, a seed. Shared by every method and dataset."""
from __future__ import annotations

import contextlib
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor, nn
from tqdm import tqdm

from pipeline.datasets.shared.base import Dataset, TaskData
from pipeline.datasets.shared.base import reduce_pixels
from pipeline.datasets.shared.loading import EpochOrder, LoaderRows, evaluation_view
from pipeline.datasets.shared.rows import is_file_backed
from pipeline.engine.checkpoint import Checkpointer, load_role_state, role_state, rng_state, set_rng_state
from pipeline.core import distributed
from pipeline.core.faults import TrainingGuard
from pipeline.core.io import Interrupted, critical_section
from pipeline.methods.base import (Batch, LossCombiner, Method, SharedTrunk, StepContext, build_method,
                                   scale_losses)
from pipeline.metrics.summary import higher_is_better
from pipeline.core.progress import ProgressLines
from pipeline.core.registry import METHODS
from pipeline.methods.bilevel import directional_derivative


def resolve_device(preference: str) -> torch.device:
    """``cpu``; ``cuda``; ``auto``: a GPU when torch sees one. With several GPUs visible, a one-process run takes
    the one with the most free memory, so that concurrent queue workers (`dvc queue start -j N`) spread over
    the GPUs instead of sharing the first (torchrun processes take their local rank's GPU instead)."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but torch sees no GPU (set device: auto or cpu)")
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and torch.cuda.device_count() > 1 and not distributed.launched_by_torchrun():
        free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
        return torch.device("cuda", max(range(len(free)), key=lambda i: (free[i], -i)))
    return torch.device(preference)


def device_name(device: torch.device) -> str:
    """The device a run used, as recorded: ``cpu``, or ``cuda:<index>`` (not the ``auto`` asked for)."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


# Each role draws its batches (and their augmentations) from its own generator, so an outer update or a
# diagnostic never changes W's batches. W's stream keeps the run's seed, as it always did.
STREAM_ROLES = ("weights", "outer", "diagnostics")
# Seeded draws that are not batches: the method's construction (φ's init, label networks, random labels).
SEED_ROLES = (*STREAM_ROLES, "method", "companion", "outer_companion")
# "companion", "outer_companion": a dataset pair's auxiliary-dataset streams (``pipeline.datasets.shared.pair``),
# drawn beside W's batches and beside the outer update's training batches.


def stream_seed(seed: int, role: str) -> int:
    """The seed of one role (``SEED_ROLES``) of a run: W's stream keeps the run's seed, as it always did."""
    if role == "weights":
        return seed
    return int(np.random.SeedSequence([seed % 2**32, SEED_ROLES.index(role)]).generate_state(1)[0])


def stream_generator(seed: int, role: str) -> torch.Generator:
    """The seeded generator of one batch stream role (``STREAM_ROLES``) of a run."""
    return torch.Generator().manual_seed(stream_seed(seed, role))


class BatchStream:
    """Endless mini-batches over ``indices``, reshuffled every epoch by a seeded generator (0 = full batch;
    the order: ``EpochOrder``). In-memory data is held on ``device``; file-backed data (``data_loading:
    stream``) is read an epoch at a time by a ``DataLoader`` with ``workers`` processes. Same batches either way.
    With several processes (``pipeline.core.distributed``) each draws the same batch and keeps its shard."""

    def __init__(self, data: TaskData, indices: np.ndarray, batch_size: int, generator: torch.Generator,
                 device: torch.device, main_unlabelled: np.ndarray | None = None, workers: int = 0) -> None:
        self.order = EpochOrder(len(indices), batch_size, generator)
        self.batch_size, self.generator = self.order.batch_size, generator
        self.rows = torch.as_tensor(indices).to(device)
        hidden = np.zeros(len(indices), bool) if main_unlabelled is None else np.isin(indices, main_unlabelled)
        self.labelled = torch.as_tensor(~hidden).to(device)  # whether the main-task label may be used
        self.loader = LoaderRows(data, indices, device, workers) if is_file_backed(data) else None
        if self.loader is None:
            self.inputs = data.inputs[torch.as_tensor(indices)].to(device)
            self.targets = data.targets[torch.as_tensor(indices)].to(device)
        self._order: Tensor | None = None  # the current epoch's permutation, on the CPU
        self._pos = 0
        self._device_order: Tensor | None = None  # the same on the device: one copy per epoch, not per step

    def next(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Inputs, targets, dataset rows, and a mask of the samples whose main-task label is known."""
        if self.order.full_batch:
            if self.loader is None and not distributed.active():
                return self.inputs, self.targets, self.rows, self.labelled
            idx = distributed.shard(torch.arange(self.order.n, device=self.rows.device))
            if self.loader is not None:
                self.loader.start([idx.cpu()])
        else:
            if self._order is None or self.order.exhausted(self._pos):
                self._order, self._pos = self.order.permutation(), 0
                self._start_epoch()
            idx = distributed.shard(self._device_order[self._pos: self._pos + self.batch_size])
            self._pos += self.batch_size
        x, y = self.loader.take() if self.loader is not None else (self.inputs[idx], self.targets[idx])
        return x, y, self.rows[idx], self.labelled[idx]

    def _start_epoch(self) -> None:
        self._device_order = self._order.to(self.rows.device)
        if self.loader is not None:  # the loader reads this epoch's remaining batches (this process's shards) ahead
            self.loader.start([distributed.shard(b) for b in self.order.batches(self._order, self._pos)])

    def state(self) -> dict[str, Any]:
        """Where the stream is in its epoch (its generator's state is saved apart)."""
        return {"order": None if self._order is None else self._order.clone(), "pos": self._pos}

    def load_state(self, state: dict[str, Any]) -> None:
        self._order, self._pos = state["order"], int(state["pos"])
        if self._order is not None:
            self._order = self._order.cpu()
            if not self.order.exhausted(self._pos):
                self._start_epoch()

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch


def join_batches(first: Batch, second: Batch) -> Batch:
    """One batch of a primary batch and a dataset pair's auxiliary batch, the auxiliary rows last."""
    return Batch(torch.cat([first.x, second.x]), torch.cat([first.y, second.y]),
                 torch.cat([first.index, second.index]), torch.cat([first.labelled, second.labelled]),
                 companion=len(second.x))


def task_scale(num_tasks: int, aux_loss_scale: float) -> Tensor:
    """τ (App. B.1): every auxiliary loss is multiplied by it, for every method alike; the main loss is not."""
    scale = torch.full((num_tasks,), aux_loss_scale)
    scale[0] = 1.0
    return scale


def batch_objective(method: Method, model: nn.Module, dataset: Dataset, batch: Batch, scale: Tensor,
                    track_hparams: bool = False) -> tuple[Tensor, Tensor]:
    """The one objective of a batch, for W's step, the outer update and the report alike: τ-scaled per-task
    losses (main loss only where the main label is known; loss images for combiners that read them) and the
    shared representation z."""
    losses, z = method.batch_losses(model, dataset, batch, track_hparams)
    if not method.needs_loss_images:
        losses = reduce_pixels(losses)
    losses = scale_losses(losses, scale, batch.labelled)
    return losses, z


def make_optimizer(params: list[Tensor], cfg: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_lr_schedule(optimizer: torch.optim.Optimizer, cfg: Any) -> torch.optim.lr_scheduler.LRScheduler:
    """``halve_midway``: App. B.2 (NYUv2) halves the rate half-way; ``cosine``: App. B.3 (CIFAR, SVHN)."""
    if cfg.lr_schedule == "halve_midway":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[max(1, cfg.steps // 2)], gamma=0.5)
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


@dataclass
class RunResult:
    model_state: dict[str, Tensor]  # best on validation
    method_state_initial: dict[str, Tensor]
    method_state_final: dict[str, Tensor]
    history: dict[str, list] = field(default_factory=dict)
    method_state_best: dict[str, Tensor] = field(default_factory=dict)  # φ when the best model was kept
    best_step: int = 0  # the step of the best validation (0: none ran)


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def logged_step(step: int, every: int, steps: int) -> bool:
    """The steps whose training values are read from the device and recorded: the first, every ``every``
    (``train.log_every``) and the last."""
    return step == 1 or step % every == 0 or step == steps


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """W's forward pass under ``train.amp`` (``none``: as it is)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def check_amp(method: Method, amp: str, key: str) -> None:
    """fp16's gradient scaler scales the per-task losses' gradients; a combiner that takes gradients itself, or
    parameters trained with W outside the losses, would see them scaled: refused, naming the key."""
    if amp != "fp16":
        return
    own_backward = type(method.combiner).backward is not LossCombiner.backward
    if own_backward or method.joint_parameters():
        why = "computes gradients itself" if own_backward else "trains its own parameters with W"
        raise ValueError(f"{key}: fp16 needs a gradient scaler, which method {method.name} does not allow (it {why});"
                         f" use {key}: bf16 (no scaler) or none")


def scaled_for_backward(losses: Tensor, scaler: torch.amp.GradScaler | None) -> Tensor:
    """``losses`` unchanged in value, with their gradient multiplied by the scaler's factor (a power of two,
    so unscaling is exact): the combiner differentiates them as they are."""
    if scaler is None:
        return losses
    scaled = scaler.scale(losses)
    return losses.detach() + (scaled - scaled.detach())


class CompiledNetwork:
    """The primary network as W's step calls it (``encode``/``decode``) through ``torch.compile``; every other
    attribute is the network's own. The outer updates keep the eager network: they differentiate twice,
    which compiled graphs do not support."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self.encode = torch.compile(model.encode)
        self.decode = torch.compile(model.decode)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class _Log:
    """Values recorded at logged steps and method logs, kept on the device until ``settle`` reads them all in
    one transfer (no host synchronisation in the steps between)."""

    def __init__(self, history: dict[str, list], live: Any) -> None:
        self.history, self.live = history, live
        self.pending: list[tuple[str, int, dict[str, Any]]] = []

    def settle(self) -> None:
        if not self.pending:
            return
        tensors = [v.detach().float().reshape(-1) for _, _, d in self.pending for v in d.values()
                   if isinstance(v, Tensor)]
        flat = iter(torch.cat(tensors).tolist()) if tensors else iter(())
        for kind, step, values in self.pending:
            plain = {k: ([next(flat) for _ in range(v.numel())] if v.dim() else next(flat))
                     if isinstance(v, Tensor) else v for k, v in values.items()}
            if kind == "train":
                self.history["step"].append(step)
                for key in ("train_loss", "main_loss", "weights"):
                    self.history[key].append(plain[key])
                if self.live is not None:
                    self.live.train_step(step, values["task_losses"], plain["weights"])
            else:
                if "hypergrad_norm" in plain:
                    self.history["hyper_step"].append(step)
                    self.history["hypergrad_norm"].append(plain["hypergrad_norm"])
                self.history["method_log"].append({"step": step, **plain})
                if self.live is not None:
                    self.live.method_log(step, plain)
        self.pending = []


def retrains_with_fixed_phi(params: Any) -> bool:
    """Whether the method's section asks for App. C.6's second run with φ frozen (``retrain_with_fixed_phi``)."""
    section = METHODS.get(params.method).config_section
    return bool(section and getattr(params.method_config(section), "retrain_with_fixed_phi", False))


def train_run(dataset: Dataset, data: TaskData, splits: dict[str, np.ndarray], params: Any, seed: int,
              device: torch.device | None = None, progress: bool = False, live: Any = None,
              checkpoint: Checkpointer | None = None, after_step: Callable[[int], None] | None = None) -> RunResult:
    """Train ``params.method`` with ``seed`` (see ``_train_once``). With ``retrain_with_fixed_phi`` (App. C.6) it
    trains twice: once as usual to find φ at the best validation step, then W again from the same start with
    φ fixed there (no outer update, no calibration); the second run is the result, and its history records the
    step φ came from (``fixed_phi_step``). Only the second run is checkpointed and live-logged: a resumed seed
    re-runs the first (deterministically, so it finds the same φ)."""
    if not retrains_with_fixed_phi(params):
        return _train_once(dataset, data, splits, params, seed, device, progress, live, checkpoint, after_step)
    search = _train_once(dataset, data, splits, params, seed, device, progress)
    result = _train_once(dataset, data, splits, params, seed, device, progress, live, checkpoint, after_step,
                         fixed_phi=search.method_state_best)
    result.history["fixed_phi_step"] = search.best_step
    return result


def _train_once(dataset: Dataset, data: TaskData, splits: dict[str, np.ndarray], params: Any, seed: int,
                device: torch.device | None = None, progress: bool = False, live: Any = None,
                checkpoint: Checkpointer | None = None, after_step: Callable[[int], None] | None = None,
                fixed_phi: dict[str, Tensor] | None = None) -> RunResult:
    """Train ``params.method`` with ``seed``; keeps the model that is best on the validation main loss.
    ``fixed_phi``: the method's state to train W under, frozen (App. C.6).

    ``progress``: a tqdm bar with the main and validation losses on a terminal, plain lines
    (``pipeline.core.progress``) elsewhere. ``live``: a ``pipeline.engine.live.LiveLogger`` given each logged step's
    per-task losses and weights and each validation. Both only read values the run computes anyway.
    ``checkpoint``: resume from its file when there is one (refused if from other settings), write one every
    ``checkpoint.every`` steps and when SIGTERM/SIGINT arrives (``pipeline.core.io.Interrupted``, at the end of
    the step in progress), and a finished one at the end. ``after_step``: called after each step completes
    (an observer; tests inject interruptions with it)."""
    device = device or resolve_device(params.device)
    seed_everything(seed)
    cfg = params.train
    # The method first, from its own seeded stream (its φ, label networks and random labels never shift W's
    # draws); then the model, once, with the head the method needs, from the run's seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(stream_seed(seed, "method")))
        method: Method = build_method(params.method, data.num_tasks, params, dataset, data).to(device)
    if fixed_phi is not None:
        method.load_state_dict(fixed_phi)
        method.requires_grad_(False)
    check_amp(method, cfg.amp, f"datasets.{dataset.name}.train.amp")
    model = dataset.build_model(data, params.profile.model, aux_outputs=method.head_outputs()).to(device)
    w_model = CompiledNetwork(model) if cfg.compile else model
    if live is not None:  # a generated task replaces the given auxiliaries in the loss columns
        live.task_names = method.loss_names(data.task_names)
        live.log_every = cfg.log_every

    train_idx = splits["train"] if method.uses_aux_set else np.concatenate([splits["train"], splits["aux"]])
    unlabelled = splits.get("unlabelled")
    generators = {role: stream_generator(seed, role) for role in STREAM_ROLES}
    weights_gen, outer_gen, diagnostics_gen = (generators[role] for role in STREAM_ROLES)
    workers = params.workers
    train_stream = BatchStream(data, train_idx, cfg.batch_size, weights_gen, device, unlabelled, workers)
    outer_train_size, outer_aux_size = method.outer_batch_sizes(cfg.batch_size)
    outer_train_stream = BatchStream(data, train_idx, outer_train_size, outer_gen, device, unlabelled, workers)
    aux_stream = BatchStream(data, splits["aux"], outer_aux_size, outer_gen, device, workers=workers)
    diagnostic_stream = BatchStream(data, train_idx, cfg.batch_size, diagnostics_gen, device, unlabelled, workers)
    streams = {"weights": train_stream, "outer_train": outer_train_stream, "aux": aux_stream,
               "diagnostics": diagnostic_stream}
    # A dataset pair (different input): W's step takes one batch of each dataset, for methods that train on given
    # auxiliaries; the auxiliary dataset's batches come from its own seeded stream, so W's primary batches are
    # those of any other method.
    companion_rows = splits.get("companion")
    companion_stream = outer_companion_stream = None
    if companion_rows is not None and len(companion_rows) and "auxiliaries" in method.spec.requires:
        for role, size in (("companion", cfg.batch_size), ("outer_companion", outer_train_size or cfg.batch_size)):
            generators[role] = stream_generator(seed, role)
            streams[role] = BatchStream(data, companion_rows, size, generators[role], device, workers=workers)
        companion_stream, outer_companion_stream = streams["companion"], streams["outer_companion"]
    val_data, all_val = evaluation_view(data, splits["val"], device)  # file-backed: read in chunks

    scale = task_scale(method.num_tasks, cfg.aux_loss_scale).to(device)

    def next_batch(stream: BatchStream) -> Batch:
        x, y, rows, labelled = stream.next()
        x, y = dataset.batch_transform(x, y, train=True, generator=stream.generator)
        return Batch(x, y, rows, labelled)

    def next_outer_train_batch() -> Batch:
        """The outer update's training batch (with a dataset pair's auxiliary batch, as W's)."""
        batch = next_batch(outer_train_stream)
        if outer_companion_stream is not None:
            batch = join_batches(batch, next_batch(outer_companion_stream))
        return batch

    def scaled_losses(batch: Batch, track_hparams: bool = False, net: Any = model) -> tuple[Tensor, Tensor]:
        return batch_objective(method, net, dataset, batch, scale, track_hparams)

    w_params = [p for p in model.parameters() if p.requires_grad]
    shared, last_shared = model.shared_parameters(), model.last_shared_parameters()
    optimizer_params = w_params + method.joint_parameters()
    optimizer = make_optimizer(optimizer_params, cfg)
    distributed.broadcast_parameters([*optimizer_params, *method.parameters()])  # one start for every process
    # W's forward: through DDP when several processes share the batches (pipeline/core/distributed.py)
    w_step = distributed.WStep(model, lambda batch: scaled_losses(batch, net=w_model), method.rewrites_gradients)
    unreduced = w_step.unreduced(optimizer_params)
    schedule = make_lr_schedule(optimizer, cfg)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    history: dict[str, list] = {"step": [], "train_loss": [], "main_loss": [], "weights": [],
                                "val_step": [], "val_main_loss": [], "hyper_step": [], "hypergrad_norm": [],
                                "method_log": [], "epoch_seconds": []}
    best_val, best_state, best_method, best_step = math.inf, _state(model), _state(method), 0
    ctx_common = dict(model=model, dataset=dataset, train_batch=next_outer_train_batch,
                      loss_scale=scale, optimizer=optimizer, diagnostic_batch=lambda: next_batch(diagnostic_stream))
    # Non-finite losses stop the run at the step they appear, with their cause named (pipeline/core/faults.py).
    guard = TrainingGuard(dataset, data, method, model, params, seed)
    val_rows = torch.as_tensor(splits["val"])
    log = _Log(history, live)
    shown: dict[str, float | None] = {"main": None, "val": None}
    initial_method_state: dict[str, Tensor] = {}
    first = 1

    def snapshot(step: int, done: bool) -> dict[str, Any]:
        return {"step": step, "done": done, "model": _state(model), "method": _state(method),
                "method_roles": role_state(method), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_state(generators), "streams": {k: v.state() for k, v in streams.items()},
                "history": history, "best_val": best_val, "best_state": best_state, "best_method": best_method,
                "best_step": best_step,
                "initial_method_state": initial_method_state, "guard": guard.state(), "shown": dict(shown),
                "live": live.state() if live is not None else None}

    resumed = checkpoint.load() if checkpoint is not None else None
    if resumed is not None:
        where = str(checkpoint.path)
        model.load_state_dict(resumed["model"])
        method.load_state_dict(resumed["method"])
        load_role_state(method, resumed["method_roles"], device, where)
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["schedule"])
        if scaler is not None:
            scaler.load_state_dict(resumed["scaler"])
        for key, stream in streams.items():
            stream.load_state(resumed["streams"][key])
        history.update(resumed["history"])
        best_val, best_state = resumed["best_val"], resumed["best_state"]
        best_method, best_step = resumed["best_method"], resumed["best_step"]
        initial_method_state = resumed["initial_method_state"]
        guard.load_state(resumed["guard"])
        shown.update(resumed["shown"])
        if live is not None and resumed["live"] is not None:
            live.restore(resumed["live"], device)
        set_rng_state(resumed["rng"], generators)  # last: restoring the rest draws nothing, but be sure
        first = resumed["step"] + 1
        if resumed["done"]:
            if live is not None:
                live.close()
            return RunResult(best_state, initial_method_state, _state(method), history, best_method, best_step)

    def outer_losses(draw: Callable[[], Batch], step: int, what: str) -> Tensor:
        batch = draw()
        losses = scaled_losses(batch, True)[0]
        guard.check_losses(step, batch, forward_ad.unpack_dual(losses).primal, what)  # one sync per outer batch
        return losses

    def loss_slope(batch: Batch, along: Sequence[Tensor], direction: Sequence[Tensor],
                   objective: Callable[[Tensor], Tensor], step: int) -> Tensor:
        """∇W objective(losses) · direction on ``batch``, W = ``along`` (forward mode; φ stays in the graph)."""
        return directional_derivative(
            model, along, direction,
            lambda: objective(outer_losses(lambda: batch, step, "outer training batch")))

    label = f"{params.method} seed {seed}"
    bar = tqdm(range(first, cfg.steps + 1), desc=label, disable=None if progress else True,
               initial=first - 1, total=cfg.steps)
    lines = ProgressLines(label, cfg.steps) if progress and bar.disable else None  # no bar drawn: plain lines
    epoch_start, epoch_len = time.perf_counter(), train_stream.steps_per_epoch
    step = first - 1
    try:
        for step in bar:
            with critical_section():  # a SIGTERM/SIGINT waits for the step's end, then is checkpointed below
                model.train()
                logged = logged_step(step, cfg.log_every, cfg.steps)
                batch = next_batch(train_stream)
                if companion_stream is not None:
                    batch = join_batches(batch, next_batch(companion_stream))
                with autocast(device, cfg.amp):
                    losses, z = w_step(batch)
                if step == 1:  # a method may calibrate φ at the losses this run sees; φ's initial state is after
                    if fixed_phi is None:  # a fixed φ is used as it was found
                        method.start(losses.detach())
                    initial_method_state = _state(method)
                    guard.start()
                optimizer.zero_grad(set_to_none=True)
                try:
                    train_loss = method.backward(scaled_for_backward(losses, scaler), SharedTrunk(shared, last_shared, z))
                except FloatingPointError as err:  # a combiner's own update (GradNorm's weights) names its key
                    raise guard.role_failed(step, err, "the loss combiner") from None
                guard.watch(step, batch, train_loss, losses)
                if logged:  # one transfer for the steps since the last logged one, before W's update
                    guard.check()
                distributed.average_gradients(unreduced)  # several processes: what DDP did not average
                if scaler is not None:
                    scaler.unscale_(optimizer)
                ctx = StepContext(step, w_params, lambda: outer_losses(next_outer_train_batch, step, "outer training batch"),
                                  lambda: outer_losses(lambda: next_batch(aux_stream), step, "auxiliary-set batch"),
                                  batch=batch,
                                  batch_losses=lambda b: outer_losses(lambda: b, step, "outer training batch"),
                                  loss_slope=lambda b, w, d, f: loss_slope(b, w, d, f, step),
                                  **ctx_common)
                logs = {}
                if fixed_phi is None:  # W's gradient, W and its optimiser's state as W's step will use them
                    try:
                        logs = dict(method.before_w_step(ctx))
                    except FloatingPointError as err:
                        raise guard.role_failed(step, err, "the outer update") from None
                if scaler is not None:
                    guard.optimiser_step(step, optimizer, scaler)
                    scaler.update()
                    with warnings.catch_warnings():  # a step the scaler skipped (inf) is expected, not a misuse
                        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                        schedule.step()
                else:
                    guard.optimiser_step(step, optimizer)
                    schedule.step()
                task_losses = reduce_pixels(losses.detach()).mean(0)
                if logged:  # the effective weights: one extra autograd pass, at logged steps only
                    weights = method.task_weights(losses).detach()
                    log.pending.append(("train", step, {
                        "train_loss": train_loss.detach(), "main_loss": reduce_pixels(losses)[:, 0].detach().mean(),
                        "weights": weights, "task_losses": task_losses}))
                elif live is not None:
                    live.train_step(step, task_losses, None)  # summed on the device, read at a logged step

                try:  # a fixed φ takes no outer step; its combiner still logs (e.g. the polynomial terms)
                    logs.update(method.after_step(ctx) if fixed_phi is None else dict(method.combiner.step_log()))
                except FloatingPointError as err:  # φ, its hypergradient, θ2: the outer update names its keys
                    raise guard.role_failed(step, err, "the outer update") from None
                if logs and any(k in logs for k in ("hypergrad_norm", "meta_loss")):
                    guard.last_outer_step = step
                if logs:
                    log.pending.append(("method", step, dict(logs)))
                if logged:
                    log.settle()
                if step % epoch_len == 0:  # wall time per pass over the training set, for method cost comparisons
                    now = time.perf_counter()
                    history["epoch_seconds"].append(now - epoch_start)
                    epoch_start = now

                if step % cfg.eval_every == 0 or step == cfg.steps:
                    guard.check()
                    log.settle()
                    model.eval()
                    eval_start = time.perf_counter()
                    val = dataset.main_loss(model, val_data, all_val)
                    history["val_step"].append(step)
                    history["val_main_loss"].append(val)
                    guard.validation(step, val, val_rows)  # names train.lr only when W is the cause
                    score = val
                    if cfg.select_by == "val_metric":  # the reference's choice: the best validation mIoU / accuracy
                        name, value = next(iter(dataset.metrics(model, val_data, all_val).items()))
                        history.setdefault("val_main_metric", []).append(value)
                        score = -value if higher_is_better(name) else value
                    if score < best_val:
                        best_val, best_state, best_method, best_step = score, _state(model), _state(method), step
                    if live is not None:
                        live.validation(step, val, history["val_main_metric"][-1] if cfg.select_by == "val_metric"
                                        else None)
                    shown["val"] = val
                    epoch_start += time.perf_counter() - eval_start  # epoch times count training only
                if progress:
                    if logged:
                        shown["main"] = history["main_loss"][-1]
                    if not bar.disable:
                        bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items() if v is not None}, refresh=False)
                    elif lines is not None:
                        lines.update(step, main_loss=shown["main"], val_loss=shown["val"])
                if checkpoint is not None and checkpoint.due(step) and step < cfg.steps:
                    guard.check()
                    log.settle()
                    checkpoint.save(snapshot(step, done=False))
            if after_step is not None:
                after_step(step)
    except Interrupted:
        # The step in progress has ended (critical section): keep everything up to it, then stop.
        if checkpoint is not None and checkpoint.enabled and step >= first:
            with critical_section():
                guard.check()
                log.settle()
                checkpoint.save(snapshot(step, done=False))
        raise
    guard.check()
    log.settle()
    if checkpoint is not None and checkpoint.enabled:
        checkpoint.save(snapshot(cfg.steps, done=True))  # supersedes the partial ones: a re-run skips the seed
    if live is not None:
        live.close()
    return RunResult(best_state, initial_method_state, _state(method), history, best_method, best_step)


def load_model(dataset: Dataset, data: TaskData, state: dict[str, Tensor], model_cfg: Any,
               aux_outputs: int = 0) -> nn.Module:
    model = dataset.build_model(data, model_cfg, aux_outputs=aux_outputs)
    model.load_state_dict(state)
    return model.eval()


def load_method(name: str, dataset: Dataset, data: TaskData, params: Any, state: dict[str, Tensor]) -> Method:
    method = build_method(name, data.num_tasks, params, dataset, data)
    method.load_state_dict(state)
    return method


