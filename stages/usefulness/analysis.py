"""Which auxiliaries will help? A usefulness report before any auxiliary training (AuxiLearn §4.2, Prop. 1).

For L_T(W; φ) = ℓ_main(W) + φ·ℓ_j(W) and W*(φ) = argmin_W L_T, the implicit function theorem at φ = 0
(the main task trained alone, to convergence) gives

    dW*/dφ = −H⁻¹ ∇_W ℓ_j,        dL_A/dφ = −⟨∇_W L_A, H⁻¹ ∇_W ℓ_j⟩,        H = ∇²_W ℓ_main(W*),

where L_A is the main-task loss on the auxiliary set. This module reports the **usefulness**

    u_j = −dL_A/dφ = ⟨(H + λI)⁻¹ ∇_W L_A, ∇_W ℓ_j⟩,

so that u_j > 0 means: adding auxiliary j with a small weight *lowers* the main loss on the aux set.
λ (``damping``) regularises the Hessian of a non-convex network (λ = 0: the exact Prop. 1 score). With
``curvature: gauss_newton`` H is replaced by its Gauss-Newton part Jᵀ∇²_f ℓ J (positive semi-definite, the
usual choice for influence functions of deep networks; identical to H for squared error on a linear model).

Cost. H is symmetric, so the inverse-Hessian-vector product is solved **once per batch, for ∇L_A**, by
conjugate gradient (``solver: cg``) or a truncated Neumann series (``solver: neumann``), each iteration one
Hessian-vector product by double backward; then every auxiliary costs one gradient ∇ℓ_j and a dot
product. T auxiliaries therefore cost one solve plus T gradients (not T solves): CUB's 312 attributes cost
about as much as a few dozen HVPs. The gradients are streamed (never stored together), so memory is that of
a few parameter vectors.

Which W. Only the parameters that ℓ_main reaches enter H and the score (the trunk and the main head). An
auxiliary head is not reached by ℓ_main; at φ → 0⁺ it sits at its own optimum given the trunk (it appears
only in φ·ℓ_j), so before scoring the heads that ℓ_main does not reach are fitted on the frozen trunk
(``head_steps``). A layer shared by the main and an auxiliary output (one Linear with all outputs) is part
of W and is not refitted.

Procedure (``analyse``), per seed: train the main task alone on the training split (not the aux set) for
``stl_steps`` steps with the dataset's optimiser settings (the final weights, not the best on validation:
Prop. 1 wants a stationary point); fit the auxiliary heads; then for each of ``batches`` batches draw a
training batch (H, ∇ℓ_main, ∇ℓ_j; main loss over the samples whose main label is known) and an aux-set
batch (∇L_A), evaluation transform, eval mode, and compute u_j and the first-order proxy
cos(∇ℓ_main, ∇ℓ_j) on the shared trunk (what GCS gates on). Scores are summarised as mean ± SEM over all
(seed, batch) draws. Losses are the dataset's per-task losses without τ (``aux_loss_scale``): u_j is the
derivative for a weight on the raw ℓ_j; a common τ would only rescale every score.

Prop. 1 is first order at φ = 0: it says what a *small* weight does. An auxiliary that is harmful at weight 1
can have either sign here (its harm is a φ² effect when the STL solution is already near the main task's
optimum); the score tells whether to turn the auxiliary on a little, not how far.

Another base point (``base_weight`` φ0 > 0). The same implicit-function derivative, evaluated at φ = φ0·1
instead of φ → 0: the whole network (trunk, main head *and* auxiliary heads: everything the objective reaches)
is trained on

    L_T(W) = ℓ_main(W) + φ0·τ·Σ_j ℓ_j(W)          (τ: ``aux_loss_scale``; φ0 = 1 is what Equal trains)

for ``stl_steps`` steps (no separate head fit), H is the Hessian (or Gauss-Newton part) of this L_T on the
training batch, W is every parameter L_T trains, and

    u_j = −dL_A/dφ_j = ⟨(H_T + λI)⁻¹ ∇_W L_A, ∇_W ℓ_j⟩,

still the derivative for a weight on the raw ℓ_j (at φ0 = 0 this is the score above, computed the same way as
before). φ0 is in the units of the training weights (multiplying τ·ℓ_j), so the base point matches the weights
the weighting methods learn. This answers "from the weighting a method starts at, which auxiliary should be
turned up, which down": on ``noisy_aux`` (default draw) the φ → 0 score ranks noisy auxiliaries as helpful
(true for a small weight: they correct STL's under-prediction on the aux set), while from φ0 ≈ 0.3 on the
ranking reverses, as the learned weights of App. C.3 do.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.core.schema import UsefulnessConfig

ROLE_CODE = {"helpful": 1.0, "irrelevant": 0.0, "harmful": -1.0}


# -- linear algebra on flat parameter vectors ---------------------------------------------------------------

def flat_grad(loss: Tensor, params: Sequence[Tensor], create_graph: bool = False, retain_graph: bool = True) -> Tensor:
    """∇ loss w.r.t. ``params`` as one flat vector (zeros where a parameter is not reached)."""
    grads = torch.autograd.grad(loss, list(params), create_graph=create_graph, retain_graph=retain_graph,
                                allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def _unflatten(v: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    return [chunk.view_as(p) for chunk, p in zip(v.split([p.numel() for p in like]), like)]


def gauss_newton_operator(outputs: Sequence[Tensor], output_loss: Callable[[list[Tensor]], Tensor],
                          params: Sequence[Tensor], damping: float = 0.0) -> Callable[[Tensor], Tensor]:
    """v ↦ (Jᵀ ∇²_f ℓ J + λI) v, J = ∂f/∂W of the network ``outputs`` f, ∇²_f ℓ of ``output_loss`` in output space.

    J v by the double-backward trick (the vector-Jacobian product is linear in its cotangent u, so its
    gradient w.r.t. u along v is J v), ∇²_f ℓ (J v) by a Hessian-vector product in output space, then Jᵀ(·).
    """
    params, outputs = list(params), list(outputs)
    leaves = [o.detach().requires_grad_() for o in outputs]
    out_grads = torch.autograd.grad(output_loss(leaves), leaves, create_graph=True, allow_unused=True)
    used = [i for i, g in enumerate(out_grads) if g is not None]
    cotangents = [torch.zeros_like(o, requires_grad=True) for o in outputs]
    vjp = torch.autograd.grad(outputs, params, cotangents, create_graph=True, allow_unused=True)
    vjp_used = [(g, k) for k, g in enumerate(vjp) if g is not None]

    def matvec(v: Tensor) -> Tensor:
        vs = _unflatten(v, params)
        jv = torch.autograd.grad([g for g, _ in vjp_used], [cotangents[i] for i in used],
                                 [vs[k] for _, k in vjp_used], retain_graph=True, allow_unused=True)
        jv = [torch.zeros_like(outputs[i]) if t is None else t for i, t in zip(used, jv)]
        dot = sum((out_grads[i] * t).sum() for i, t in zip(used, jv))
        hjv = torch.autograd.grad(dot, [leaves[i] for i in used], retain_graph=True, allow_unused=True)
        hjv = [torch.zeros_like(leaves[i]) if t is None else t for i, t in zip(used, hjv)]
        gv = torch.autograd.grad([outputs[i] for i in used], params, hjv, retain_graph=True, allow_unused=True)
        out = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gv, params)])
        return out + damping * v if damping else out

    return matvec


def hvp_operator(main_loss: Tensor, params: Sequence[Tensor], damping: float = 0.0
                 ) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """(v ↦ (∇²main_loss + λI) v by double backward, ∇main_loss detached); the graph is kept for repeated calls."""
    grad = flat_grad(main_loss, params, create_graph=True)

    def matvec(v: Tensor) -> Tensor:
        hv = flat_grad(grad @ v, params, retain_graph=True)
        return hv + damping * v if damping else hv

    return matvec, grad.detach()


@dataclass
class SolveInfo:
    iterations: int
    relative_residual: float  # ‖b − A x‖ / ‖b‖ (CG: the recursive residual; Neumann: measured at the end)
    negative_curvature: bool = False  # CG met pᵀAp ≤ 0 (H + λI not positive definite there) and stopped


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float) -> tuple[Tensor, SolveInfo]:
    """Solve A x = b for symmetric A; stops at ‖r‖ ≤ tol‖b‖, after ``iters`` products, or on pᵀAp ≤ 0."""
    x = torch.zeros_like(b)
    b_norm = float(torch.linalg.vector_norm(b))
    if b_norm == 0.0:
        return x, SolveInfo(0, 0.0)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    for it in range(1, iters + 1):
        ap = matvec(p)
        curvature = p @ ap
        if float(curvature) <= 0.0:
            # H + λI is not positive definite along p: take this last step with the curvature's absolute value
            # (a finite step that still lowers the quadratic's gradient part) and stop; flagged in the report.
            if float(curvature) < 0.0:
                x = x + (rr / curvature.abs()) * p
            residual = float(torch.linalg.vector_norm(b - matvec(x))) / b_norm
            return x, SolveInfo(it, residual, negative_curvature=True)
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        if math.sqrt(float(rr_new)) <= tol * b_norm:
            return x, SolveInfo(it, math.sqrt(float(rr_new)) / b_norm)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, SolveInfo(iters, math.sqrt(float(rr)) / b_norm)


def neumann_solve(matvec: Callable[[Tensor], Tensor], b: Tensor, steps: int, lr: float) -> tuple[Tensor, SolveInfo]:
    """x = α Σ_{j=0}^{J} (I − αA)^j b, the truncated Neumann series of A⁻¹ b (as the bilevel engine uses)."""
    term = b.clone()
    total = b.clone()
    for _ in range(steps):
        term = term - lr * matvec(term)
        total = total + term
    x = lr * total
    b_norm = float(torch.linalg.vector_norm(b))
    residual = float(torch.linalg.vector_norm(b - matvec(x))) / b_norm if b_norm else 0.0
    return x, SolveInfo(steps, residual)


def inverse_hvp(matvec: Callable[[Tensor], Tensor], b: Tensor, cfg: UsefulnessConfig) -> tuple[Tensor, SolveInfo]:
    """(H + λI)⁻¹ b with the configured solver (``matvec`` already includes λ)."""
    if cfg.solver == "cg":
        return conjugate_gradient(matvec, b, cfg.cg_iters, cfg.cg_tol)
    return neumann_solve(matvec, b, cfg.neumann_steps, cfg.neumann_lr)


# -- one batch ---------------------------------------------------------------------------------------------

@dataclass
class BatchScores:
    usefulness: np.ndarray  # [K] u_j = ⟨(H + λI)⁻¹ ∇L_A, ∇ℓ_j⟩ = −dL_A/dφ_j
    cosine: np.ndarray  # [K] cos(∇ℓ_main, ∇ℓ_j) on the trunk, training batch (GCS)
    cosine_aux: np.ndarray  # [K] cos(∇L_A, ∇ℓ_j) on the trunk: Prop. 1 with H replaced by I, normalised
    info: SolveInfo


def score_batch(train_losses: Tensor, aux_main_loss: Tensor, params: Sequence[Tensor], trunk: Sequence[Tensor],
                cfg: UsefulnessConfig,
                outputs: tuple[Sequence[Tensor], Callable[[list[Tensor]], Tensor]] | None = None,
                aux_weight: float = 0.0) -> BatchScores:
    """Prop. 1 scores and the cosine proxy of every auxiliary from one training batch and one aux-set batch.

    ``train_losses``: [T] batch-mean per-task losses on the training batch (column 0: main), with their graph;
    ``aux_main_loss``: the main loss on the aux-set batch (L_A); ``params``: W (what ℓ_main reaches);
    ``trunk``: the shared parameters, where the cosines are measured (GCS's choice).
    One inverse-HVP solve for ∇L_A, then one gradient per auxiliary.

    Besides u_j: cos(∇ℓ_main, ∇ℓ_j) (GCS's proxy; at a converged STL solution ∇ℓ_main on the whole training
    set vanishes, so this needs batches smaller than the training set to mean anything) and
    cos(∇L_A, ∇ℓ_j), which keeps Prop. 1's held-out gradient but drops the Hessian.
    ``outputs`` (the training batch's network outputs and the training objective as a function of them: the
    main loss, or L_T when ``aux_weight`` > 0) is needed for ``curvature: gauss_newton``.
    ``aux_weight`` c: H is the Hessian of L_T = ℓ_main + c·Σ_j ℓ_j (the base point φ = c·1; 0: ℓ_main alone).
    """
    params = list(params)
    in_trunk = {id(p) for p in trunk}
    mask = torch.cat([torch.full((p.numel(),), id(p) in in_trunk, dtype=torch.bool, device=p.device) for p in params])
    grad_aux_set = flat_grad(aux_main_loss, params, retain_graph=False)
    if aux_weight:
        g_main = flat_grad(train_losses[0], params).detach()
        matvec, _ = hvp_operator(_objective(train_losses, aux_weight), params, cfg.damping)
    else:
        matvec, g_main = hvp_operator(train_losses[0], params, cfg.damping)
    if cfg.curvature == "gauss_newton":
        if outputs is None:
            raise ValueError("curvature: gauss_newton needs the network outputs of the training batch")
        matvec = gauss_newton_operator(outputs[0], outputs[1], params, cfg.damping)
    v, info = inverse_hvp(matvec, grad_aux_set.detach(), cfg)
    g_main, g_aux_set = g_main[mask], grad_aux_set[mask]
    main_norm, aux_set_norm = torch.linalg.vector_norm(g_main), torch.linalg.vector_norm(g_aux_set)
    scores, cosines, cosines_aux = [], [], []
    for j in range(1, len(train_losses)):
        g = flat_grad(train_losses[j], params, retain_graph=j < len(train_losses) - 1)
        scores.append(float(g @ v))
        g_trunk = g[mask]
        norm = torch.linalg.vector_norm(g_trunk)
        cosines.append(_cos(g_trunk @ g_main, norm * main_norm))
        cosines_aux.append(_cos(g_trunk @ g_aux_set, norm * aux_set_norm))
    return BatchScores(np.asarray(scores), np.asarray(cosines), np.asarray(cosines_aux), info)


def _cos(dot: Tensor, norms: Tensor) -> float:
    return float(dot) / float(norms) if float(norms) > 0 else 0.0  # a vanishing gradient: no direction, 0


# -- the analysis on a dataset ------------------------------------------------------------------------------

def batch_task_losses(model: nn.Module, dataset: Any, x: Tensor, y: Tensor, labelled: Tensor | None = None) -> Tensor:
    """[T] batch means of the raw per-task losses; the main task averaged over the samples whose label is known.

    (Autograd connects every entry to every head through the concatenations, with zero gradients where a head
    plays no part: ``main_parameters`` therefore tests for zero gradients, not for missing ones.)"""
    return task_losses(dataset, model(x), y, labelled)


def task_losses(dataset: Any, outputs: Any, y: Tensor, labelled: Tensor | None = None) -> Tensor:
    """``batch_task_losses`` from the network's outputs."""
    from pipeline.datasets.shared.base import reduce_pixels

    losses = reduce_pixels(dataset.per_task_losses(outputs, y))
    if labelled is None or bool(labelled.all()):
        main = losses[:, 0].mean()
    elif bool(labelled.any()):
        main = losses[labelled, 0].mean()
    else:
        raise ValueError("a usefulness batch holds no sample with a main-task label: raise usefulness.batch_size")
    return torch.cat([main[None], losses[:, 1:].mean(0)])


def main_parameters(model: nn.Module, loss: Tensor) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(parameters ℓ_main depends on, trainable parameters it does not: the auxiliary heads).

    A parameter whose gradient is missing or exactly zero on the batch counts as not reached (a concatenation
    of all tasks' losses gives an auxiliary head a zero gradient rather than none)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=False)
    reached = [g is not None and bool(g.ne(0).any()) for g in grads]
    return [p for p, r in zip(params, reached) if r], [p for p, r in zip(params, reached) if not r]


class _Sampler:
    """Random batches (without replacement inside a batch) of a fixed index set, evaluation transform. With
    ``companion`` rows (a dataset pair's auxiliary dataset), each batch is followed by as many of those, as the
    training stream's batches are (``pipeline.engine.training``)."""

    def __init__(self, dataset: Any, data: Any, indices: np.ndarray, size: int, generator: torch.Generator,
                 device: torch.device, unlabelled: np.ndarray | None = None,
                 companion: np.ndarray | None = None) -> None:
        if len(indices) == 0:
            raise ValueError("the usefulness analysis needs a non-empty training split and aux set")
        self.dataset, self.data, self.device, self.generator = dataset, data, device, generator
        self.indices = torch.as_tensor(np.asarray(indices))
        self.size = size if 0 < size < len(indices) else len(indices)
        hidden = np.zeros(len(indices), bool) if unlabelled is None else np.isin(indices, unlabelled)
        self.labelled = torch.as_tensor(~hidden)
        self.companion = torch.as_tensor(np.asarray(companion)) if companion is not None and len(companion) else None

    def draw(self) -> tuple[Tensor, Tensor, Tensor]:
        pick = torch.randperm(len(self.indices), generator=self.generator)[: self.size]
        rows, labelled = self.indices[pick], self.labelled[pick]
        if self.companion is not None:
            extra = self.companion[torch.randperm(len(self.companion), generator=self.generator)[: self.size]]
            rows, labelled = torch.cat([rows, extra]), torch.cat([labelled, torch.ones(len(extra), dtype=torch.bool)])
        x, y = self.dataset.batch_transform(self.data.inputs[rows].to(self.device), self.data.targets[rows].to(self.device),
                                            train=False)
        return x, y, labelled.to(self.device)


def train_main_task(dataset: Any, data: Any, splits: dict[str, np.ndarray], train_cfg: Any, model_cfg: Any, seed: int,
                    steps: int, device: torch.device, aux_weight: float = 0.0
                    ) -> tuple[nn.Module, list[nn.Parameter], list[nn.Parameter]]:
    """Single-task learning on the training split only (not the aux set): the final weights, in eval mode, with
    (W: the parameters ℓ_main depends on, the auxiliary heads). Only W is optimised: the heads keep their
    initial values (an optimiser's weight decay would otherwise shrink them towards 0 on zero gradients).

    ``aux_weight`` c > 0: train on L_T = ℓ_main + c·Σ_j ℓ_j instead (the base point φ = c·1); W is then every
    parameter L_T reaches, auxiliary heads included, and the second list holds what L_T does not reach."""
    from pipeline.engine.training import BatchStream, make_lr_schedule, make_optimizer, seed_everything

    generator = seed_everything(seed)
    model = dataset.build_model(data, model_cfg).to(device)
    cfg = train_cfg.model_copy(update={"steps": steps})
    stream = BatchStream(data, splits["train"], cfg.batch_size, generator, device, splits.get("unlabelled"))
    x, y, _, labelled = stream.next()
    x, y = dataset.batch_transform(x, y, train=False)
    params, heads = main_parameters(model, _objective(batch_task_losses(model, dataset, x, y, labelled), aux_weight))
    stream = BatchStream(data, splits["train"], cfg.batch_size, generator, device, splits.get("unlabelled"))
    optimizer = make_optimizer(params, cfg)
    schedule = make_lr_schedule(optimizer, cfg)
    model.train()
    for _ in range(steps):
        x, y, _, labelled = stream.next()
        x, y = dataset.batch_transform(x, y, train=True, generator=generator)
        if not bool(labelled.any()):
            continue
        loss = _objective(batch_task_losses(model, dataset, x, y, labelled), aux_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    if not all(torch.isfinite(p).all() for p in params):
        raise FloatingPointError("the main-task-only training diverged: lower datasets.<name>.train.lr"
                                 + (" or usefulness.base_weight" if aux_weight else ""))
    return model.eval(), params, heads


def _objective(losses: Tensor, aux_weight: float) -> Tensor:
    """L_T = ℓ_main + c·Σ_j ℓ_j from the [T] task losses (c = 0: ℓ_main alone, the very same tensor)."""
    return losses[0] + aux_weight * losses[1:].sum() if aux_weight else losses[0]


def fit_aux_heads(model: nn.Module, dataset: Any, sampler: _Sampler, heads: list[nn.Parameter], steps: int, lr: float) -> None:
    """Fit the parameters ℓ_main does not reach on Σ_j ℓ_j, trunk frozen (their φ → 0⁺ optimum)."""
    from pipeline.datasets.shared.base import reduce_pixels

    if not heads or steps == 0:
        return
    optimizer = torch.optim.Adam(heads, lr=lr)
    for _ in range(steps):
        x, y, _ = sampler.draw()
        with torch.no_grad():
            z = model.encode(x)
        out = model.decode(z)
        loss = reduce_pixels(dataset.per_task_losses(out, y))[:, 1:].mean(0).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@dataclass
class UsefulnessResult:
    task_names: list[str]  # the auxiliaries, in dataset order
    usefulness: np.ndarray  # [draws, K]: one row per (seed, batch)
    cosine: np.ndarray  # [draws, K]
    cosine_aux: np.ndarray  # [draws, K]
    seeds: list[int]
    whole_training_set: bool = False  # the training batch was the whole training split
    solves: list[SolveInfo] = field(default_factory=list)
    seconds: float = 0.0
    stl_aux_loss: list[float] = field(default_factory=list)  # L_A of each seed's base model (STL at φ0 = 0; whole aux set)

    def summary(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and SEM over the draws, per auxiliary."""
        n = len(values)
        sem = values.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(values.shape[1])
        return values.mean(0), sem


def analyse(dataset: Any, data: Any, splits: dict[str, np.ndarray], train_cfg: Any, model_cfg: Any,
            cfg: UsefulnessConfig, seeds: Sequence[int], device: torch.device | str = "cpu") -> UsefulnessResult:
    """STL, auxiliary heads, then ``cfg.batches`` Prop. 1 / cosine draws per seed (see the module docstring);
    with ``cfg.base_weight`` φ0 > 0: training on ℓ_main + φ0·τ·Σ_j ℓ_j, then the draws at that base point."""
    device = torch.device(device)
    if data.num_tasks < 2:
        raise ValueError("the usefulness analysis needs at least one auxiliary task")
    start = time.perf_counter()
    steps = cfg.stl_steps or train_cfg.steps
    aux_weight = cfg.base_weight * train_cfg.aux_loss_scale  # φ0·τ on the raw ℓ_j (0: Prop. 1 at φ → 0)
    scores, cosines, cosines_aux, solves, aux_losses = [], [], [], [], []
    for seed in seeds:
        model, params, heads = train_main_task(dataset, data, splits, train_cfg, model_cfg, seed, steps, device,
                                               aux_weight)
        generator = torch.Generator().manual_seed(10_000 + seed)
        train = _Sampler(dataset, data, splits["train"], cfg.batch_size, generator, device, splits.get("unlabelled"),
                         splits.get("companion"))
        aux = _Sampler(dataset, data, splits["aux"], cfg.aux_batch_size, generator, device)
        if not aux_weight:  # at φ0 > 0 the heads were trained with the trunk on L_T
            fit_aux_heads(model, dataset, train, heads, cfg.head_steps, cfg.head_lr)
        trunk = model.shared_parameters()
        whole_aux = _Sampler(dataset, data, splits["aux"], 0, generator, device)
        with torch.no_grad():
            xa, ya, _ = whole_aux.draw()
            aux_losses.append(float(batch_task_losses(model, dataset, xa, ya)[0]))
        for _ in range(cfg.batches):
            x, y, labelled = train.draw()
            xa, ya, _ = aux.draw()
            net_out = model(x)
            outs = list(net_out) if isinstance(net_out, (tuple, list)) else [net_out]
            rebuild = (lambda leaves: tuple(leaves)) if isinstance(net_out, (tuple, list)) else (lambda leaves: leaves[0])
            out = score_batch(task_losses(dataset, net_out, y, labelled), batch_task_losses(model, dataset, xa, ya)[0],
                              params, trunk, cfg,
                              (outs, lambda leaves: _objective(task_losses(dataset, rebuild(leaves), y, labelled),
                                                               aux_weight)), aux_weight)
            scores.append(out.usefulness)
            cosines.append(out.cosine)
            cosines_aux.append(out.cosine_aux)
            solves.append(out.info)
    return UsefulnessResult(list(data.task_names[1:]), np.stack(scores), np.stack(cosines), np.stack(cosines_aux),
                            list(seeds), train.size == len(train.indices), solves, time.perf_counter() - start,
                            aux_losses)


# -- how well a score separates the known roles ---------------------------------------------------------------

def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann–Whitney U / (n·m))."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    diff = positive[:, None] - negative[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def role_separation(values: np.ndarray, names: Sequence[str], roles: dict[str, str]) -> dict[str, Any]:
    """Per-role mean score, AUC(helpful > harmful) and Spearman(score, role code helpful 1 / irrelevant 0 / harmful −1)."""
    role_of = [roles.get(n) for n in names]
    known = np.array([r in ROLE_CODE for r in role_of])
    out: dict[str, Any] = {"by_role": {}}
    for role in ROLE_CODE:
        sel = np.array([r == role for r in role_of])
        if sel.any():
            out["by_role"][role] = {"mean": float(values[sel].mean()), "count": int(sel.sum())}
    helpful = values[np.array([r == "helpful" for r in role_of])]
    harmful = values[np.array([r == "harmful" for r in role_of])]
    out["auc_helpful_vs_harmful"] = auc(helpful, harmful)
    codes = np.array([ROLE_CODE[r] for r in role_of if r in ROLE_CODE])
    out["spearman_with_role"] = spearman(values[known], codes) if known.sum() > 1 else float("nan")
    return out


# (metrics key, UsefulnessResult attribute, label): the Prop. 1 score and the two first-order proxies.
SCORES = (("prop1", "usefulness", "usefulness (Prop. 1)"), ("cosine", "cosine", "cos(∇ℓ_main, ∇ℓ_j)"),
          ("cosine_aux", "cosine_aux", "cos(∇L_A, ∇ℓ_j)"))


def summarise(result: UsefulnessResult, roles: dict[str, str] | None, ordered: bool) -> dict[str, Any]:
    """The small metrics file: top-level numbers only (per-auxiliary scores go to the table and the CSV)."""
    means = {key: result.summary(getattr(result, attr))[0] for key, attr, _ in SCORES}
    out: dict[str, Any] = {
        "num_aux": len(result.task_names),
        "draws": int(len(result.usefulness)),
        "stl_aux_loss": float(np.mean(result.stl_aux_loss)),
        "whole_training_set_batches": result.whole_training_set,
        "solver": {
            "mean_iterations": float(np.mean([s.iterations for s in result.solves])),
            "max_relative_residual": float(max(s.relative_residual for s in result.solves)),
            "negative_curvature": int(sum(s.negative_curvature for s in result.solves)),
        },
    }
    index = np.arange(1, len(result.task_names) + 1)
    for key, _, _ in SCORES:
        m = means[key]
        block: dict[str, Any] = {"mean": float(m.mean()), "positive_share": float((m > 0).mean()),
                                 "top": result.task_names[int(np.argmax(m))]}
        if key != "prop1":
            block["spearman_with_prop1"] = spearman(means["prop1"], m)
        if ordered:
            block["spearman_with_index"] = spearman(index, m)
        if roles:
            block.update(role_separation(m, result.task_names, roles))
        out[key] = block
    return _finite_or_none(out)


def _finite_or_none(obj: Any) -> Any:
    """NaN (an undefined correlation) becomes null, so the metrics file is plain JSON."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# -- report ----------------------------------------------------------------------------------------------------

def _fmt(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3g}"


def markdown_report(result: UsefulnessResult, summary: dict[str, Any], roles: dict[str, str] | None, cfg: UsefulnessConfig,
                    dataset_name: str, max_rows: int = 50) -> str:
    stats = {key: result.summary(getattr(result, attr)) for key, attr, _ in SCORES}
    order = np.argsort(-stats["prop1"][0])
    ranks = {}
    for key in ("cosine", "cosine_aux"):
        ranks[key] = np.empty(len(order), int)
        ranks[key][np.argsort(-stats[key][0])] = np.arange(1, len(order) + 1)
    solver = (f"conjugate gradient (≤ {cfg.cg_iters} iterations, tol {cfg.cg_tol:g})" if cfg.solver == "cg"
              else f"Neumann series (J = {cfg.neumann_steps}, α = {cfg.neumann_lr:g})")
    s = summary["solver"]
    if cfg.base_weight:
        base = (f"at φ = {cfg.base_weight:g}·1, the whole network trained on L_T = ℓ_main + {cfg.base_weight:g}·τ·Σ_j ℓ_j "
                "(τ: aux_loss_scale; H: Hessian of L_T on a training batch, L_A: the main loss on the aux set): "
                f"**u_j > 0: raising auxiliary j's weight a little above {cfg.base_weight:g} lowers the main loss on "
                "the aux set; u_j < 0: lowering it does.** ")
        base_loss = f"main loss of the φ = {cfg.base_weight:g}·1 model on the aux set"
    else:
        base = ("at φ = 0, the main task trained alone (H: Hessian "
                "of the main loss on a training batch, L_A: the main loss on the aux set): "
                "**u_j > 0: adding auxiliary j with a small weight lowers the main loss on the aux set.** ")
        base_loss = "STL main loss on the aux set"
    lines = [
        f"# Auxiliary usefulness on {dataset_name} (AuxiLearn Prop. 1)",
        "",
        "usefulness u_j = −dL_A/dφ_j = ⟨(H + λI)⁻¹ ∇L_A, ∇ℓ_j⟩ " + base +
        "First-order proxies on the shared trunk: cos(∇ℓ_main, ∇ℓ_j) on the training batch (what GCS gates on) and "
        "cos(∇L_A, ∇ℓ_j) (Prop. 1 without the Hessian). "
        f"Mean ± SEM over {len(result.usefulness)} draws (seeds {result.seeds} × {cfg.batches} batches of "
        f"{cfg.batch_size or 'all'} training / {cfg.aux_batch_size or 'all'} aux-set samples). "
        f"Inverse {'Gauss-Newton' if cfg.curvature == 'gauss_newton' else 'Hessian'}-vector product: {solver}, "
        f"damping λ = {cfg.damping:g}; mean {s['mean_iterations']:.1f} iterations, "
        f"largest relative residual {s['max_relative_residual']:.2g}"
        + (f", negative curvature met in {s['negative_curvature']} solves" if s["negative_curvature"] else "")
        + f". {base_loss[0].upper() + base_loss[1:]}: {summary['stl_aux_loss']:.4g}.",
        "",
    ]
    if result.whole_training_set:
        if not cfg.base_weight:
            lines += ["Note: every training batch was the whole training split, where ∇ℓ_main vanishes at the STL "
                      "solution: cos(∇ℓ_main, ∇ℓ_j) is then the direction of the optimiser's leftover and means nothing; "
                      "set `usefulness.batch_size` below the training-set size for it.", ""]
    lines += [
        "| rank | auxiliary | " + ("role | " if roles else "") + "usefulness (Prop. 1) | cos(∇ℓ_main, ∇ℓ_j) | rank | "
        "cos(∇L_A, ∇ℓ_j) | rank |",
        "|---|---|" + ("---|" if roles else "") + "---|---|---|---|---|",
    ]
    rows = []
    for rank, j in enumerate(order, 1):
        role = f" {roles.get(result.task_names[j], '—')} |" if roles else ""
        cells = [f"{_fmt(stats['prop1'][0][j])} ± {_fmt(stats['prop1'][1][j])}"]
        for key in ("cosine", "cosine_aux"):
            cells += [f"{stats[key][0][j]:.3f} ± {stats[key][1][j]:.3f}", str(ranks[key][j])]
        rows.append(f"| {rank} | {result.task_names[j]} |{role} " + " | ".join(cells) + " |")
    if len(rows) > max_rows:
        half = max_rows // 2
        rows = rows[:half] + [f"| … | {len(rows) - 2 * half} more in usefulness.csv |" + (" |" if roles else "")
                              + " | | | | |"] + rows[-half:]
    lines += rows + [""]
    lines += ["Spearman ρ with the Prop. 1 score: "
              f"cos(∇ℓ_main, ∇ℓ_j) {_fmt(summary['cosine']['spearman_with_prop1'])}, "
              f"cos(∇L_A, ∇ℓ_j) {_fmt(summary['cosine_aux']['spearman_with_prop1'])}.", ""]
    if "spearman_with_index" in summary["prop1"]:
        lines += ["Spearman ρ with the auxiliary index: " + ", ".join(
            f"{label} {_fmt(summary[key]['spearman_with_index'])}" for key, _, label in SCORES) + ".", ""]
    if roles:
        lines += ["| score | " + " | ".join(f"mean ({r})" for r in ROLE_CODE) + " | AUC helpful > harmful | "
                  "Spearman with role |", "|---|" + "---|" * (len(ROLE_CODE) + 2)]
        for key, _, label in SCORES:
            sep = summary[key]
            means = [_fmt(sep["by_role"][r]["mean"]) if r in sep["by_role"] else "—" for r in ROLE_CODE]
            lines.append(f"| {label} | " + " | ".join(means) + f" | {_fmt(sep['auc_helpful_vs_harmful'])} | "
                         f"{_fmt(sep['spearman_with_role'])} |")
        lines += ["", "Roles (from the dataset's stand-in) describe an auxiliary trained at a full weight; the scores "
                  "here describe a small one.", ""]
    if cfg.base_weight:
        lines += [f"The score is first order at φ = {cfg.base_weight:g}·1: it ranks what a small change of one weight "
                  "does from there (usefulness.base_weight = 0 gives Prop. 1's φ → 0 ranking, which can differ).",
                  "", "![usefulness](usefulness.png)", ""]
    else:
        lines += ["Prop. 1 is first order: it ranks what a *small* weight does at the STL solution. An auxiliary "
                  "that hurts at weight 1 can score either sign here when the STL solution already sits near the "
                  "main task's optimum (its harm is then a φ² effect).", "", "![usefulness](usefulness.png)", ""]
    return "\n".join(lines)


def csv_rows(result: UsefulnessResult, roles: dict[str, str] | None) -> tuple[list[str], list[list[Any]]]:
    stats = {key: result.summary(getattr(result, attr)) for key, attr, _ in SCORES}
    header = ["auxiliary", "role"] + [f"{key}_{part}" for key, _, _ in SCORES for part in ("mean", "sem")]
    rows = [[n, (roles or {}).get(n, "")] + [float(stats[key][part][j]) for key, _, _ in SCORES for part in (0, 1)]
            for j, n in enumerate(result.task_names)]
    return header, rows


def plot_usefulness(result: UsefulnessResult, roles: dict[str, str] | None, path: Any) -> None:
    """Three panels, auxiliaries ranked by Prop. 1 score: the score and both cosine proxies, mean ± SEM, by role."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.core.io import atomic_path

    stats = {key: result.summary(getattr(result, attr)) for key, attr, _ in SCORES}
    order = np.argsort(-stats["prop1"][0])
    k = len(order)
    colours = {"helpful": "tab:green", "irrelevant": "tab:grey", "harmful": "tab:red"}
    colour = [colours.get((roles or {}).get(result.task_names[j], ""), "tab:blue") for j in order]
    fig, axes = plt.subplots(1, 3, figsize=(14, max(3.0, min(0.22 * k + 1.2, 14))), sharey=True)
    pos = np.arange(k)
    titles = ("usefulness −dL_A/dφ (Prop. 1)", "cos(∇ℓ_main, ∇ℓ_j), trunk", "cos(∇L_A, ∇ℓ_j), trunk")
    for ax, (key, _, _), title in zip(axes, SCORES, titles):
        mean, sem = stats[key]
        ax.barh(pos, mean[order], xerr=sem[order], color=colour, alpha=0.85, error_kw={"lw": 0.8})
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel(title)
    axes[0].set_yticks(pos if k <= 60 else [])
    if k <= 60:
        axes[0].set_yticklabels([result.task_names[j] for j in order], fontsize=8 if k > 20 else 10)
    axes[0].invert_yaxis()
    axes[0].set_ylabel("auxiliary (ranked by Prop. 1)")
    if roles:
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
        axes[2].legend(handles, list(colours), loc="lower right", fontsize=8)
    fig.suptitle(f"auxiliary usefulness before training, mean ± SEM over {len(result.usefulness)} draws")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
