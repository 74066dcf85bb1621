"""The bilevel engine (AuxiLearn Alg. 1 and 2): implicit-function-theorem hypergradients for any φ.

∇φ L_A(W*(φ)) = ∂L_A/∂φ − ∇W L_A · (∇²_W L_T)⁻¹ · ∇φ∇W L_T, with the inverse-Hessian-vector product
approximated by a J-term Neumann series  H⁻¹v ≈ α Σ_{j=0..J} (I − αH)^j v  (Lorraine et al., 2020).
Only vector-Hessian products are formed, by double backward through one retained graph of ∇W L_T.

Units. ``neumann_hypergradient`` returns the IFT hypergradient itself (the leading α included), which
converges to the exact dL_A/dφ as J grows. The AuxiLearn reference code omits that α (its ``hpo_lr``),
so its hypergradient is ours / α. ``HyperOptimizer`` keeps the IFT value and makes φ's step independent
of α in two ways: the ``normalized`` optimiser (the default) and Adam (DTG-AuxL's upper level) are
invariant to the gradient's scale,
and the norm clip is applied in the reference's units (‖g/α‖ ≤ ``max_hypergrad_norm``), where each
Neumann term (I − αH)^j v is bounded by ‖v‖ whatever α is. ``from_reference`` maps the reference's
settings (φ lr, ``hpo_lr``, ``max_grad_norm``) onto these, exactly for SGD.

Curvature batch. The Hessian in the series (and λ̂) may come from the first ``curvature_batch`` rows of the hyper
step's L_T batch while the mixed term ∇φ(∇W L_T · series) keeps the whole batch: the series' correction terms
(j ≥ 1) then see a sub-sampled Hessian (as Hessian-free optimisation samples its curvature batch), and the j = 0
term ∇φ∇W L_T · ∇W L_A, the alignment of each auxiliary with the main loss, is exact on the whole batch. The
mixed term is then a derivative along the series in W, taken in forward mode (``directional_derivative``): one
forward with dual parameters, no graph through W, instead of ∇W L_T with ``create_graph`` and a backward.

Curvature. The series only converges when α·λ_max(∇²_W L_T) < 2. ``neumann_lr: auto`` estimates λ_max
by power iteration on the same vHp (warm-started from the last eigenvector), sets α = c/λ̂ with the
safety factor c = ``curvature_safety`` < 1, and refreshes it every ``curvature_every`` hyper steps; every
refresh logs α·λ̂ (the α that was in force against the new estimate). A fixed α with α·λ̂ ≥ 2 warns,
naming the key. Between refreshes the curvature can outgrow α (the loss-combining networks' weights, and with
them ∇²_W L_T, may grow several-fold in a few hyper steps); each series term's Rayleigh quotient q, free from the
H·t the series computes anyway, shows it: at α·q ≥ ``series_stop`` the series ends there (a shorter Neumann
series, not a divergent one) and the next hyper step refreshes λ̂.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.autograd.forward_ad as forward_ad
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from pipeline.core.distributed import mean_across
from pipeline.core.functional import call_with
from pipeline.core.faults import overflow_named
from pipeline.core.schema import StrictModel


class BilevelConfig(StrictModel):
    """``methods.bilevel``: the outer update of every method with φ trained by IFT hypergradients
    (the AuxiLearn loss-combining networks and AuxiLearn's label generator)."""

    optimizer: Literal["normalized", "adam", "sgd"] = Field(
        "normalized", description="φ's optimiser. normalized and adam are insensitive to the hypergradient's scale "
                                  "(α, τ, loss units); normalized keeps the ratios between a tensor's entries "
                                  "(which auxiliary matters more), which adam's per-entry scaling erases")
    lr: float = Field(1e-2, gt=0, description="φ's learning rate (for sgd, in IFT units: reference lr / hpo_lr)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and normalized")
    weight_decay: float = Field(0.0, ge=0, description="on φ (sgd: in IFT units, reference value × hpo_lr)")
    hyper_every: int = Field(20, ge=1, description="N: inner steps between φ updates")
    neumann_steps: int = Field(3, ge=0, description="J: terms of the truncated Neumann series")
    neumann_lr: float | Literal["auto"] = Field(
        "auto", description="α of the Neumann series; auto = curvature_safety / λ̂_max(∇²_W L_T) by power iteration")
    curvature_safety: float = Field(0.5, gt=0, lt=1, description="c in α = c / λ̂_max (auto)")
    curvature_every: int = Field(5, ge=1, description="hyper steps between λ̂_max refreshes")
    curvature_iterations: int = Field(8, ge=1, description="power iterations per refresh (warm-started)")
    series_stop: float | None = Field(
        1.0, gt=0, description="auto only: the Neumann series ends at a term t whose curvature q = t·Ht / t·t gives "
                               "α·q ≥ this (the curvature has grown past the α of the last refresh) and λ̂_max is "
                               "refreshed at the next hyper step; null = never (the reference's fixed series)")
    max_hypergrad_norm: float | None = Field(
        None, gt=0, description="clip ‖hypergradient / α‖ (the reference's units, AuxiLearn max_grad_norm); null = never")
    hyper_train_batch: int = Field(0, ge=0, description="batch of L_T for the hypergradient; 0 = train.batch_size")
    hyper_aux_batch: int = Field(0, ge=0, description="batch of L_A (auxiliary set); 0 = the whole auxiliary set")
    implicit_scope: Literal["all", "top"] = Field(
        "all", description="the part of W the IFT differentiates through: all (the paper), or top (the trunk's last "
                           "block and the task heads; the rest of W is a constant of the hypergradient, so the "
                           "hyper step's backward passes stop there, and it still trains)")
    curvature_batch: int = Field(
        0, ge=0, description="rows of the hyper step's L_T batch whose Hessian the Neumann series and λ̂ use; the "
                             "mixed term keeps the whole batch (forward mode). 0 = the whole batch (one graph)")

    @model_validator(mode="after")
    def _series_stop_above_the_safety(self) -> "BilevelConfig":
        if self.series_stop is not None and self.series_stop <= self.curvature_safety:
            raise ValueError(f"series_stop = {self.series_stop:g} must exceed curvature_safety = "
                             f"{self.curvature_safety:g}: right after a refresh α·λ̂ = curvature_safety, so every "
                             "series would end at its first term")
        return self


def from_reference(lr: float, hpo_lr: float, max_grad_norm: float | None, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> dict:
    """``methods.bilevel`` settings that reproduce the AuxiLearn reference's MetaOptimizer (SGD with ``lr``,
    Neumann scale ``hpo_lr``, clip ``max_grad_norm``) step for step: its hypergradient is ours / α, so
    φ's SGD lr and weight decay are rescaled by α and the clip keeps its value (it is applied to g / α)."""
    return {"optimizer": "sgd", "lr": lr / hpo_lr, "momentum": momentum, "weight_decay": weight_decay * hpo_lr,
            "neumann_lr": hpo_lr, "max_hypergrad_norm": max_grad_norm}


def _grads(out: Tensor, inputs: Sequence[Tensor], **kwargs) -> list[Tensor]:
    grads = torch.autograd.grad(out, inputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _vjp(outputs: Sequence[Tensor | GradientEdge | None], vectors: Sequence[Tensor], inputs: Sequence[Tensor],
         **kwargs) -> list[Tensor]:
    """∇_inputs (outputs · vectors), the vectors handed to autograd as the outputs' gradients: no product
    outputs × vectors is formed, so no W-sized copy of the vectors enters the backward (peak memory). An output
    may be given by its place in the graph alone (a ``GradientEdge``); ``None``: it does not depend on inputs."""
    pairs = [(out, vec) for out, vec in zip(outputs, vectors)
             if isinstance(out, GradientEdge) or (out is not None and out.requires_grad)]
    if not pairs:
        return [torch.zeros_like(x) for x in inputs]
    outs, vecs = zip(*pairs)
    return _grads(list(outs), inputs, grad_outputs=list(vecs), **kwargs)


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _norm(a: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(sum((x.detach() ** 2).sum() for x in a))


def _writable(tensors: Sequence[Tensor], overwrite: bool) -> list[Tensor]:
    """Detached tensors that may be written in place: ``tensors`` themselves when they are the caller's to lose
    (``overwrite``), except expanded views (stride 0, which autograd may hand back), else copies."""
    return [x.detach() if overwrite and x.is_contiguous() else x.detach().clone() for x in tensors]


# In place, in functions of their own: a loop variable left in the caller would keep the last tensor of H·v alive
def _divide_into(out: Sequence[Tensor], tensors: Sequence[Tensor], scale: Tensor) -> None:
    for x, t in zip(out, tensors):
        torch.div(t, scale, out=x)


def _next_term(term: Sequence[Tensor], total: Sequence[Tensor], hv: Sequence[Tensor], rate: float) -> None:
    """term ← (I − rate·H) term, total += term; ``hv`` = H·term."""
    for t, s, h in zip(term, total, hv):
        t.sub_(rate * h)
        s.add_(t)


class TensorNormalizedSGD(torch.optim.Optimizer):
    """SGD with momentum on g / RMS(g), the RMS taken over the whole tensor and averaged over steps like
    Adam's second moment (bias-corrected). Its steps are scale-free like Adam's, so φ moves whatever α,
    τ or the losses' units are, but within a tensor they stay proportional to the hypergradient."""

    def __init__(self, params, lr: float, momentum: float = 0.9, beta2: float = 0.999, eps: float = 1e-12,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, beta2=beta2, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["square"] = torch.zeros((), dtype=p.dtype, device=p.device)
                    state["velocity"] = torch.zeros_like(p)
                state["step"] += 1
                state["square"].mul_(group["beta2"]).add_((1 - group["beta2"]) * p.grad.pow(2).mean())
                rms = (state["square"] / (1 - group["beta2"] ** state["step"])).sqrt().add_(group["eps"])
                direction = p.grad / rms + group["weight_decay"] * p
                state["velocity"].mul_(group["momentum"]).add_(direction)
                p.add_(state["velocity"], alpha=-group["lr"])


class TrainCurvature:
    """∇W L_T kept in the graph, so vector-Hessian products H·v cost one backward each.

    ``train_loss`` may instead be the lower level's update direction G(W, φ) itself, one tensor per parameter
    built with ``create_graph`` (a lower step that is not the gradient of one scalar, e.g. MAOAL's per-module
    scaled gradients): the IFT of G(W*, φ) = 0 then uses ∂G/∂W (vector-Jacobian products) for the Hessian.

    ``gradient`` holds ∇W L_T's values until ``release_values``; the products need only its place in the graph,
    so after that call it is kept as gradient edges and its W-sized values are freed (one vector less at the
    series' peak, the same numbers)."""

    def __init__(self, train_loss: Tensor | Sequence[Tensor], params: Sequence[Tensor]) -> None:
        self.params = list(params)
        if isinstance(train_loss, Tensor):
            self.gradient: list[Tensor] | None = _grads(train_loss, self.params, create_graph=True)
        else:
            self.gradient = list(train_loss)
        self._outputs: list[Tensor | GradientEdge | None] = list(self.gradient)

    def release_values(self) -> None:
        """Free ∇W L_T's values, keeping its graph: ``gradient`` is None from here on."""
        self._outputs = [get_gradient_edge(g) if g.requires_grad else None for g in self.gradient or []]
        self.gradient = None

    def release_graph(self) -> None:
        """Free ∇W L_T's graph (its last product is done)."""
        self._outputs, self.gradient = [], None

    def vjp(self, v: Sequence[Tensor], inputs: Sequence[Tensor], **kwargs) -> list[Tensor]:
        """∇_inputs (∇W L_T · v)."""
        return _vjp(self._outputs, v, inputs, **kwargs)

    def hvp(self, v: Sequence[Tensor]) -> list[Tensor]:
        return mean_across([h.detach() for h in self.vjp(v, self.params, retain_graph=True)])

    def top_eigenvalue(self, start: Sequence[Tensor], iterations: int, overwrite: bool = False
                       ) -> tuple[float, list[Tensor]]:
        """|λ|_max of ∇²_W L_T by power iteration from ``start``: (Rayleigh quotient, unit eigenvector).

        Each H·v is normalised straight into v's storage, so only v and one H·v are alive at a time (the same
        roundings as out of place); ``overwrite``: ``start`` is the caller's to lose (saves a copy)."""
        v = _writable(start, overwrite)
        scale = _norm(v)
        if not torch.isfinite(scale) or scale == 0:
            v = [torch.ones_like(x) for x in v]
            scale = _norm(v)
        for x in v:
            x.div_(scale)
        estimate = torch.zeros(())
        for _ in range(iterations):
            hv = self.hvp(v)
            estimate = _dot(v, hv)  # Rayleigh quotient of the unit vector v
            size = _norm(hv)
            if size == 0:
                break
            _divide_into(v, hv, size)
            del hv  # else it stays alive through the next product, one more W-sized vector at the peak
        return abs(float(estimate)), v

    def inverse_hvp(self, v: Sequence[Tensor], neumann_steps: int, neumann_lr: float,
                    overwrite: bool = False, stop_rate: float | None = None) -> tuple[list[Tensor], int]:
        """Σ_{j=0..J} (I − αH)^j v: the reference's series; × α it approximates H⁻¹ v. Returns (the sum, the
        number of terms after the first that it holds).

        ``stop_rate``: the series ends before the term (I − αH)t of a term t whose curvature, the Rayleigh
        quotient q = t·Ht / t·t, gives α·q ≥ ``stop_rate``: along t the curvature is at least ``stop_rate`` / α,
        so α no longer fits it and the next terms may grow instead of shrinking (α·q > 2 diverges).
        The terms are updated in place (the same roundings as out of place), so only the sum, the current
        term and one H·v are alive at a time; ``overwrite``: ``v`` is the caller's to lose (saves a copy)."""
        v = _writable(v, overwrite)
        p = [x.clone() for x in v]
        for j in range(neumann_steps):
            hv = self.hvp(v)
            if stop_rate is not None:
                square = _dot(v, v)
                if square > 0 and neumann_lr * float(_dot(v, hv) / square) >= stop_rate:
                    return p, j
            _next_term(v, p, hv, neumann_lr)
            del hv  # as in top_eigenvalue
        return p, neumann_steps


def _outer_gradients(aux_loss: Tensor, params: list[Tensor], hparams: list[Tensor], shared_graph: bool = True
                     ) -> tuple[list[Tensor], list[Tensor]]:
    """(∂L_A/∂φ, ∇W L_A) in one backward pass over L_A's graph. ``shared_graph``: L_A may share nodes with L_T
    (DTG-AuxL's instance regulariser reads the generator's output that L_T is built from), so its graph is
    retained; otherwise its saved activations are freed before ∇W L_T's graph is built (peak memory)."""
    grads = mean_across([g.detach() for g in _grads(aux_loss, [*hparams, *params], retain_graph=shared_graph)])
    return grads[:len(hparams)], grads[len(hparams):]


# ∇W L_T · d for a direction d in W, with φ in the graph: the mixed term's inner product
Slope = Callable[[list[Tensor]], Tensor]


class _Call(nn.Module):
    """Runs ``fn`` with ``module`` as a submodule, so that ``call_with`` can swap its parameters."""

    def __init__(self, module: nn.Module, fn: Callable[[], Tensor]) -> None:
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self) -> Tensor:
        return self.fn()


def directional_derivative(module: nn.Module, params: Sequence[Tensor], direction: Sequence[Tensor],
                           fn: Callable[[], Tensor]) -> Tensor:
    """∇W fn() · direction, W = ``params`` (parameters of ``module``), by forward-mode differentiation: ``fn``
    runs once with W replaced by dual tensors along ``direction``. No graph is built through W; whatever else
    ``fn`` reads (φ) stays in the graph of the result."""
    names = {id(p): name for name, p in module.named_parameters()}
    missing = [i for i, p in enumerate(params) if id(p) not in names]
    if missing:
        raise ValueError(f"directional_derivative: parameters {missing} are not the module's own")
    with forward_ad.dual_level():
        duals = {f"module.{names[id(p)]}": forward_ad.make_dual(p.detach(), d.to(p.dtype))
                 for p, d in zip(params, direction)}
        tangent = forward_ad.unpack_dual(call_with(_Call(module, fn), duals)).tangent
    if tangent is None:  # fn does not depend on W
        return torch.zeros((), device=params[0].device if params else None)
    return tangent


def _series_hypergradient(direct: list[Tensor], series: list[Tensor], curvature: TrainCurvature,
                          hparams: list[Tensor], neumann_lr: float, slope: Slope | None = None) -> list[Tensor]:
    """∂L_A/∂φ − α·∇φ(∇W L_T · series); α scales the φ-sized result rather than a W-sized copy of the series.
    ``slope``: ∇W L_T · series on L_T's whole batch (when the curvature's graph holds only some rows of it)."""
    if slope is not None:
        curvature.release_graph()  # the series was its last use: free it before the forward on the whole batch
    mixed = mean_across(_grads(slope(series), hparams) if slope is not None else curvature.vjp(series, hparams))
    return [(d - neumann_lr * m).detach() for d, m in zip(direct, mixed)]


def neumann_hypergradient(
    train_loss: Tensor,
    aux_loss: Tensor,
    params: Sequence[Tensor],
    hparams: Sequence[Tensor],
    neumann_steps: int,
    neumann_lr: float,
    slope: Slope | None = None,
) -> list[Tensor]:
    """Approximate dL_A/dφ at the current (W, φ), treating W as the inner optimum W*(φ).

    ``train_loss`` and ``aux_loss`` must be built from ``params`` (W) and, where they depend on them,
    ``hparams`` (φ). With ``neumann_steps`` → ∞ and ``neumann_lr`` < 2/λ_max(H) this is the exact IFT
    hypergradient. ``slope``: the mixed term's ∇W L_T · series on a larger batch than ``train_loss``'s, which
    then serves the curvature only (``curvature_batch``).
    """
    params, hparams = list(params), list(hparams)
    direct, v = _outer_gradients(aux_loss, params, hparams)
    curvature = TrainCurvature(train_loss, params)
    curvature.release_values()
    series, _ = curvature.inverse_hvp(v, neumann_steps, neumann_lr, overwrite=True)
    return _series_hypergradient(direct, series, curvature, hparams, neumann_lr, slope)


@dataclass
class HyperStepStats:
    hypergrad_norm: float  # ‖dL_A/dφ‖ in IFT units, before clipping
    reference_norm: float  # ‖dL_A/dφ‖ / α: the quantity the clip bounds
    clipped: bool
    aux_loss: float
    neumann_lr: float  # α used in this step
    alpha_lambda: float | None  # α in force × the fresh λ̂_max, on steps that refreshed it
    series_terms: int  # terms of the Neumann series after the first (fewer than J where series_stop ended it)


# φ: tensors, or torch parameter groups ({"params": [...], "lr_scale": s}) whose rate is s × ``cfg.lr``
# (a deep auxiliary network steps each of its D layers at lr / D: ``AuxNetCombiner.hyper_parameter_groups``)
HyperParameters = Sequence[Tensor] | Sequence[dict]


def _param_groups(hparams: HyperParameters, lr: float) -> list[dict]:
    if all(isinstance(h, Tensor) for h in hparams):
        return [{"params": list(hparams), "lr": lr}]
    groups = [(list(g["params"]), g.get("lr_scale", 1.0)) for g in hparams]  # type: ignore[index, union-attr]
    return [{"params": params, "lr": lr * scale} for params, scale in groups if params]


class HyperOptimizer:
    """Owns φ and its optimiser; every ``cfg.hyper_every`` inner steps it takes one IFT hypergradient step.

    Any method with auxiliary parameters (loss-combining networks, label generators) uses this.
    ``after_update`` runs after each φ step (e.g. clipping negative weights for monotone networks).
    ``key`` names the config section in messages (e.g. ``methods.bilevel``).
    """

    def __init__(self, hparams: HyperParameters, cfg: BilevelConfig, *,
                 after_update: Callable[[], None] | None = None, key: str = "methods.bilevel") -> None:
        groups = _param_groups(hparams, cfg.lr)
        self.hparams = [p for g in groups for p in g["params"]]
        self.cfg = cfg
        self.key = key
        if cfg.optimizer == "normalized":
            self.optimizer: torch.optim.Optimizer = TensorNormalizedSGD(
                groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(groups, lr=cfg.lr,
                                                                     weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                             weight_decay=cfg.weight_decay)
        self.after_update = after_update
        self.auto = cfg.neumann_lr == "auto"
        self.neumann_lr: float | None = None if self.auto else float(cfg.neumann_lr)
        self.hyper_steps = 0
        self._eigenvector: list[Tensor] | None = None
        self._warned = False
        self.last_lambda: float | None = None  # the latest λ̂_max, for messages
        self.refresh_next = False  # series_stop ended the last series: the curvature outgrew α

    @property
    def every(self) -> int:
        return self.cfg.hyper_every

    @property
    def neumann_steps(self) -> int:
        return self.cfg.neumann_steps

    def due(self, step: int) -> bool:
        """Alg. 1: φ is updated after every block of ``every`` inner steps (``step`` counts from 1)."""
        return step % self.cfg.hyper_every == 0

    def _refresh_curvature(self, curvature: TrainCurvature) -> float | None:
        """Power iteration when due; returns α_in_force × λ̂ (None when not refreshed this step)."""
        due = self.hyper_steps % self.cfg.curvature_every == 0 or self.refresh_next
        if not due and self.neumann_lr is not None:
            return None
        self.refresh_next = False
        warm = self._eigenvector is not None
        # warm: the iteration runs in the last eigenvector's storage (no W-sized copy beside it);
        # cold: the start reads ∇W L_T, which the series still needs, so it is copied
        start = self._eigenvector if warm else mean_across([g.detach() for g in curvature.gradient])
        iterations = self.cfg.curvature_iterations * (1 if warm else 2)
        lam, self._eigenvector = curvature.top_eigenvalue(start, iterations, overwrite=warm)
        if not math.isfinite(lam):
            raise FloatingPointError(f"{self.key}'s hyper step {self.hyper_steps + 1}: the curvature estimate "
                                     f"λ̂_max of ∇²_W L_T is {lam}: W has diverged (lower the dataset's train.lr) "
                                     f"or the data holds NaN/inf")
        self.last_lambda = lam
        in_force = self.neumann_lr
        if self.auto:
            self.neumann_lr = self.cfg.curvature_safety / max(lam, 1e-12)
        if in_force is None:
            in_force = self.neumann_lr
        product = in_force * lam
        if not self.auto and product >= 2 and not self._warned:
            warnings.warn(f"{self.key}.neumann_lr = {in_force:g} gives α·λ̂_max = {product:.2f} ≥ 2: the Neumann "
                          f"series diverges; set {self.key}.neumann_lr: auto or below {2 / lam:.3g}", stacklevel=3)
            self._warned = True
        return product

    def step(self, train_loss: Tensor | Sequence[Tensor], aux_loss: Tensor, params: Sequence[Tensor],
             shared_graph: bool = True, slope: Slope | None = None) -> HyperStepStats:
        """One φ step. ``shared_graph=False`` promises that ``aux_loss``'s graph shares no node with
        ``train_loss``'s (separate forwards), so it is freed early. ``slope``: the mixed term's ∇W L_T · series
        on a larger batch than ``train_loss``'s, which then serves the curvature only (``curvature_batch``)."""
        params = list(params)
        direct, v = _outer_gradients(aux_loss, params, self.hparams, shared_graph)
        curvature = TrainCurvature(train_loss, params)
        alpha_lambda = self._refresh_curvature(curvature)  # its cold start reads ∇W L_T's values: the last read
        curvature.release_values()
        alpha = float(self.neumann_lr)  # type: ignore[arg-type]
        # the series overwrites v; its finiteness is kept as a lazy flag, read only to explain a failure
        v_finite = torch.stack([torch.isfinite(x).all() for x in v]).all() if v else torch.tensor(True)
        stop_rate = self.cfg.series_stop if self.auto else None
        series, terms = curvature.inverse_hvp(v, self.cfg.neumann_steps, alpha, overwrite=True, stop_rate=stop_rate)
        self.refresh_next = terms < self.cfg.neumann_steps
        del v
        grads = _series_hypergradient(direct, series, curvature, self.hparams, alpha, slope)
        norm = float(_norm(grads))
        if not math.isfinite(norm):
            raise FloatingPointError(self._non_finite(norm, aux_loss, direct, v_finite, series, alpha))
        reference_norm = norm / alpha
        clipped = self.cfg.max_hypergrad_norm is not None and reference_norm > self.cfg.max_hypergrad_norm
        if clipped:
            grads = [g * (self.cfg.max_hypergrad_norm / reference_norm) for g in grads]
        self.optimizer.zero_grad(set_to_none=True)
        for h, g in zip(self.hparams, grads):
            h.grad = g
        with overflow_named(f"φ's step in {self.key}'s hyper step {self.hyper_steps + 1}",
                            f"lower {self.key}.lr (now {self.cfg.lr:g})"):
            self.optimizer.step()
        if self.after_update is not None:
            self.after_update()
        if not bool(torch.stack([torch.isfinite(h).all() for h in self.hparams]).all()):
            raise FloatingPointError(
                f"φ became non-finite in {self.key}'s hyper step {self.hyper_steps + 1} (hypergradient norm "
                f"{norm:.3g}): lower {self.key}.lr (now {self.cfg.lr:g})")
        self.hyper_steps += 1
        return HyperStepStats(hypergrad_norm=norm, reference_norm=reference_norm, clipped=clipped,
                              aux_loss=float(aux_loss.detach()), neumann_lr=alpha, alpha_lambda=alpha_lambda,
                              series_terms=terms)

    def _non_finite(self, norm: float, aux_loss: Tensor, direct: list[Tensor], v_finite: Tensor,
                    series: list[Tensor], alpha: float) -> str:
        """Which part of the hypergradient broke, and the key that governs it (called only on failure)."""
        def finite(tensors: Sequence[Tensor]) -> bool:
            return all(bool(torch.isfinite(t).all()) for t in tensors)

        where = f"{self.key}'s hyper step {self.hyper_steps + 1}: the hypergradient of φ is {norm}"
        phi = max((float(h.detach().abs().max()) for h in self.hparams if h.numel()), default=0.0)
        if not (math.isfinite(float(aux_loss.detach())) and bool(v_finite)):
            return (f"{where}, because the outer loss L_A or its gradient in W is non-finite (L_A = "
                    f"{float(aux_loss.detach()):.3g}): W has diverged (lower the dataset's train.lr) or the "
                    f"auxiliary set's data holds NaN/inf")
        if not finite(series) or finite(direct):
            lam = f", λ̂_max = {self.last_lambda:.3g}, α·λ̂_max = {alpha * self.last_lambda:.3g}" \
                if self.last_lambda is not None else ""
            if not finite(series):
                what = f"the Neumann series diverged (α = {alpha:.3g}{lam})"
            else:
                what = (f"the mixed term α·∇φ∇W L_T·series overflowed (α = {alpha:.3g}{lam}, "
                        f"max |φ| = {phi:.3g})")
            if self.auto:
                return (f"{where}: {what}: lower {self.key}.curvature_safety (now {self.cfg.curvature_safety:g}) "
                        f"(λ̂_max was underestimated) or raise {self.key}.curvature_iterations")
            bound = f" (below 2/λ̂_max = {2 / self.last_lambda:.3g})" if self.last_lambda else ""
            return (f"{where}: {what}: lower {self.key}.neumann_lr (now {alpha:g}){bound} or set "
                    f"{self.key}.neumann_lr: auto")
        return (f"{where}: its direct term ∂L_A/∂φ is non-finite (max |φ| = {phi:.3g}): lower {self.key}.lr "
                f"(now {self.cfg.lr:g})")

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def log(self, stats: HyperStepStats) -> dict[str, float]:
        """The scalars a method logs for one hyper step."""
        out = {"hypergrad_norm": stats.hypergrad_norm, "outer_main_loss": stats.aux_loss,
               "neumann_lr": stats.neumann_lr, "clipped": float(stats.clipped),
               "series_cut": float(stats.series_terms < self.cfg.neumann_steps)}
        if stats.alpha_lambda is not None:
            out["alpha_lambda"] = stats.alpha_lambda
        return out
