"""One training run: a method, a dataset, a seed. Shared by every method and dataset."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from pipeline.datasets.base import Dataset, TaskData
from pipeline.datasets.base import reduce_pixels
from pipeline.datasets.shared.loading import EpochOrder, LoaderRows, evaluation_view
from pipeline.datasets.shared.rows import is_file_backed
from pipeline.faults import TrainingGuard
from pipeline.methods.base import Batch, Method, SharedTrunk, StepContext, build_method, scale_losses
from pipeline.metrics.summary import higher_is_better
from pipeline.progress import ProgressLines


def resolve_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but torch sees no GPU (set device: auto or cpu)")
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
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
SEED_ROLES = (*STREAM_ROLES, "method")


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
    stream``) is read an epoch at a time by a ``DataLoader`` with ``workers`` processes. Same batches either way."""

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
            if self.loader is None:
                return self.inputs, self.targets, self.rows, self.labelled
            idx = torch.arange(self.order.n, device=self.rows.device)
            self.loader.start([idx.cpu()])
        else:
            if self._order is None or self.order.exhausted(self._pos):
                self._order, self._pos = self.order.permutation(), 0
                self._start_epoch()
            idx = self._device_order[self._pos: self._pos + self.batch_size]
            self._pos += self.batch_size
        x, y = self.loader.take() if self.loader is not None else (self.inputs[idx], self.targets[idx])
        return x, y, self.rows[idx], self.labelled[idx]

    def _start_epoch(self) -> None:
        self._device_order = self._order.to(self.rows.device)
        if self.loader is not None:  # the loader reads this epoch's remaining batches ahead
            self.loader.start(self.order.batches(self._order, self._pos))

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


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def train_run(dataset: Dataset, data: TaskData, splits: dict[str, np.ndarray], params: Any, seed: int,
              device: torch.device | None = None, progress: bool = False, live: Any = None) -> RunResult:
    """Train ``params.method`` with ``seed``; keeps the model that is best on the validation main loss.

    ``progress``: a tqdm bar with the main and validation losses on a terminal, plain lines
    (``pipeline.progress``) elsewhere. ``live``: a ``pipeline.live.LiveLogger`` given each step's per-task
    losses and weights and each validation. Both only read values the run computes anyway."""
    device = device or resolve_device(params.device)
    seed_everything(seed)
    # The method first, from its own seeded stream (its φ, label networks and random labels never shift W's
    # draws); then the model, once, with the head the method needs, from the run's seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(stream_seed(seed, "method")))
        method: Method = build_method(params.method, data.num_tasks, params, dataset, data).to(device)
    model = dataset.build_model(data, params.profile.model, aux_outputs=method.head_outputs()).to(device)
    cfg = params.train
    if live is not None:  # a generated task replaces the given auxiliaries in the loss columns
        live.task_names = method.loss_names(data.task_names)

    train_idx = splits["train"] if method.uses_aux_set else np.concatenate([splits["train"], splits["aux"]])
    unlabelled = splits.get("unlabelled")
    weights_gen, outer_gen, diagnostics_gen = (stream_generator(seed, role) for role in STREAM_ROLES)
    workers = params.workers
    train_stream = BatchStream(data, train_idx, cfg.batch_size, weights_gen, device, unlabelled, workers)
    outer_train_size, outer_aux_size = method.outer_batch_sizes(cfg.batch_size)
    outer_train_stream = BatchStream(data, train_idx, outer_train_size, outer_gen, device, unlabelled, workers)
    aux_stream = BatchStream(data, splits["aux"], outer_aux_size, outer_gen, device, workers=workers)
    diagnostic_stream = BatchStream(data, train_idx, cfg.batch_size, diagnostics_gen, device, unlabelled, workers)
    val_data, all_val = evaluation_view(data, splits["val"], device)  # file-backed: read in chunks

    scale = task_scale(method.num_tasks, cfg.aux_loss_scale).to(device)

    def next_batch(stream: BatchStream) -> Batch:
        x, y, rows, labelled = stream.next()
        x, y = dataset.batch_transform(x, y, train=True, generator=stream.generator)
        return Batch(x, y, rows, labelled)

    def scaled_losses(batch: Batch, track_hparams: bool = False) -> tuple[Tensor, Tensor]:
        return batch_objective(method, model, dataset, batch, scale, track_hparams)

    w_params = [p for p in model.parameters() if p.requires_grad]
    shared, last_shared = model.shared_parameters(), model.last_shared_parameters()
    optimizer = make_optimizer(w_params + method.joint_parameters(), cfg)
    schedule = make_lr_schedule(optimizer, cfg)
    history: dict[str, list] = {"step": [], "train_loss": [], "main_loss": [], "weights": [],
                                "val_step": [], "val_main_loss": [], "hyper_step": [], "hypergrad_norm": [],
                                "method_log": [], "epoch_seconds": []}
    best_val, best_state = math.inf, _state(model)
    ctx_common = dict(model=model, dataset=dataset, train_batch=lambda: next_batch(outer_train_stream),
                      loss_scale=scale, optimizer=optimizer, diagnostic_batch=lambda: next_batch(diagnostic_stream))
    epoch_start, epoch_len = time.perf_counter(), train_stream.steps_per_epoch
    # Non-finite losses stop the run at the step they appear, with their cause named (pipeline/faults.py).
    guard = TrainingGuard(dataset, data, method, model, params, seed)
    val_rows = torch.as_tensor(splits["val"])

    def outer_losses(stream: BatchStream, step: int, what: str) -> Tensor:
        batch = next_batch(stream)
        losses = scaled_losses(batch, True)[0]
        guard.check_losses(step, batch, losses, what)  # one sync per outer batch
        return losses

    label = f"{params.method} seed {seed}"
    bar = tqdm(range(1, cfg.steps + 1), desc=label, disable=None if progress else True)
    lines = ProgressLines(label, cfg.steps) if progress and bar.disable else None  # no bar drawn: plain lines
    shown: dict[str, float | None] = {"main": None, "val": None}
    for step in bar:
        model.train()
        batch = next_batch(train_stream)
        losses, z = scaled_losses(batch)
        if step == 1:  # a method may calibrate φ at the losses this run sees; φ's initial state is after that
            method.start(losses.detach())
            initial_method_state = _state(method)
            guard.start()
        optimizer.zero_grad(set_to_none=True)
        try:
            train_loss = method.backward(losses, SharedTrunk(shared, last_shared, z))
        except FloatingPointError as err:  # a combiner's own update (GradNorm's weights) names its key
            raise guard.role_failed(step, err, "the loss combiner") from None
        # L_T and Σ per-task losses in one transfer (the history's float(L_T) took one anyway)
        train_value, _ = values = guard.step_values(train_loss, losses)
        guard.finite_step(step, values, batch, losses)  # before W's update: fail fast, at this step
        guard.optimiser_step(step, optimizer)
        schedule.step()
        history["step"].append(step)
        history["train_loss"].append(train_value)
        history["main_loss"].append(float(reduce_pixels(losses)[:, 0].detach().mean()))
        history["weights"].append(method.task_weights(losses).cpu().tolist())
        if live is not None:
            live.train_step(step, reduce_pixels(losses.detach()).mean(0), history["weights"][-1])

        ctx = StepContext(step, w_params, lambda: outer_losses(outer_train_stream, step, "outer training batch"),
                          lambda: outer_losses(aux_stream, step, "auxiliary-set batch"), batch=batch, **ctx_common)
        try:
            logs = method.after_step(ctx)
        except FloatingPointError as err:  # φ, its hypergradient, θ2: the outer update names its keys
            raise guard.role_failed(step, err, "the outer update") from None
        if logs and any(k in logs for k in ("hypergrad_norm", "meta_loss")):
            guard.last_outer_step = step
        if "hypergrad_norm" in logs:
            history["hyper_step"].append(step)
            history["hypergrad_norm"].append(logs["hypergrad_norm"])
        if logs:
            history["method_log"].append({"step": step, **logs})
            if live is not None:
                live.method_log(step, logs)
        if step % epoch_len == 0:  # wall time per pass over the training set, for method cost comparisons
            now = time.perf_counter()
            history["epoch_seconds"].append(now - epoch_start)
            epoch_start = now

        if step % cfg.eval_every == 0 or step == cfg.steps:
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
                best_val, best_state = score, _state(model)
            if live is not None:
                live.validation(step, val, history["val_main_metric"][-1] if cfg.select_by == "val_metric" else None)
            shown["val"] = val
            epoch_start += time.perf_counter() - eval_start  # epoch times count training only
        if progress:
            shown["main"] = history["main_loss"][-1]
            if not bar.disable:
                bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items() if v is not None}, refresh=False)
            elif lines is not None:
                lines.update(step, main_loss=shown["main"], val_loss=shown["val"])

    if live is not None:
        live.close()
    return RunResult(best_state, initial_method_state, _state(method), history)


def load_model(dataset: Dataset, data: TaskData, state: dict[str, Tensor], model_cfg: Any,
               aux_outputs: int = 0) -> nn.Module:
    model = dataset.build_model(data, model_cfg, aux_outputs=aux_outputs)
    model.load_state_dict(state)
    return model.eval()


def load_method(name: str, dataset: Dataset, data: TaskData, params: Any, state: dict[str, Tensor]) -> Method:
    method = build_method(name, data.num_tasks, params, dataset, data)
    method.load_state_dict(state)
    return method


