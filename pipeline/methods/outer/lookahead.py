"""MAXL's outer update (Liu et al. 2019, Alg. 1): θ2 follows the main loss after a one-step look-ahead of W.

``LookAheadUpdate`` is the exact second-order meta-gradient (through ``torch.func.functional_call``, by
``pipeline.core.functional.call_with``); ``FirstOrderLookAhead`` the reference's finite-difference approximation.
Options: ``methods.labels`` (see ``generators/labels.py``, which also documents how each default follows the
authors' code).

Cost. θ1⁺ = θ1 − α·c·(∇θ1 L_T + wd·θ1) − α·b depends on θ2 only through the generated task's soft labels ȳ(θ2)
in ∇θ1 L_T. So, with e = α·c·∇θ1⁺ ℓ_main(θ1⁺), the second-order term is
−∇θ2 [e · ∇θ1 L_T] = −∇θ2 Σ_o (J_o e) · ∂L_T/∂o (o, ȳ(θ2)), where o are the network's outputs at θ1 and J_o e
their derivative along e: one forward-mode pass, then gradients at the output level only. Both methods share
the first-order part (∇θ1 L_T without a graph, θ1⁺, e); neither differentiates through a backward pass of W.
With ``maxl_meta_batch: step`` the update runs between W's backward and W's optimiser step
(``before_w_step``) and takes ∇θ1 L_T from W's own gradient: one forward and backward of W fewer.
``meta_loss`` keeps the objective as one differentiable graph (its gradient is the same number)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from pipeline.core.distributed import mean_across
from pipeline.core.functional import call_with
from pipeline.core.faults import FaultKeys, Suspect, all_finite, max_abs, overflow_named
from pipeline.methods.base import Batch, OuterUpdate, StepContext, scale_losses
from pipeline.methods.generators.labels import GeneratedLabels, LabelsConfig, WithGeneratedHead, negative_entropy


class LookAheadUpdate(OuterUpdate):
    """MAXL with the exact second-order meta-gradient (the reference's ``model_vgg_maxl.py``): every
    ``maxl_every`` W steps, θ2 (the label network of ``labels``) takes one SGD step on the main loss after a
    one-step look-ahead of W, plus the entropy term and θ2's penalty."""

    def __init__(self, labels: GeneratedLabels, cfg: LabelsConfig, base_lr: float) -> None:
        self.labels = labels
        self.cfg = cfg
        self.base_lr = base_lr  # the look-ahead's rate when no optimiser is at hand (direct calls)
        decay = cfg.weight_decay if cfg.maxl_penalty == "l2" else 0.0
        self.optimizer = torch.optim.SGD(labels.label_net.parameters(), lr=cfg.lr, momentum=cfg.maxl_momentum,
                                         weight_decay=decay)

    # -- the look-ahead step θ1⁺ -------------------------------------------------------------------

    def lookahead_rule(self, params: dict[str, Tensor], optimizer: Any = None
                       ) -> dict[str, tuple[float, float, float, Tensor | float]]:
        """Per parameter (α, wd, c, b) with θ1⁺ = θ1 − α·(c·(∇ℓ + wd·θ1) + b): one step of W's optimiser as
        ``torch.optim.SGD`` takes it. α: ``lookahead_lr`` if set, else the optimiser's current learning rate
        (its schedule); wd: its weight decay; c, b: 1, 0 unless ``maxl_lookahead_momentum`` (then the
        momentum buffer's share, with dampening and Nesterov as SGD applies them). Without an optimiser:
        α = ``lookahead_lr`` or ``train.lr``, no decay, no momentum."""
        group_of = {p: g for g in optimizer.param_groups for p in g["params"]} if optimizer is not None else {}
        rule = {}
        for name, p in params.items():
            group = group_of.get(p)
            lr = self.cfg.lookahead_lr or (group["lr"] if group is not None else self.base_lr)
            wd = float(group.get("weight_decay", 0.0) or 0.0) if group is not None else 0.0
            c, b = 1.0, 0.0
            mu = float(group.get("momentum", 0.0) or 0.0) if group is not None else 0.0
            if self.cfg.maxl_lookahead_momentum and mu > 0:
                damp, nesterov = float(group.get("dampening", 0.0)), bool(group.get("nesterov", False))
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is None:  # SGD's first step: the buffer starts as the gradient itself
                    c = 1 + mu if nesterov else 1.0
                else:
                    c = 1 + mu * (1 - damp) if nesterov else 1 - damp
                    b = (mu * mu if nesterov else mu) * buf.detach()
            rule[name] = (float(lr), wd, c, b)
        return rule

    def lookahead(self, params: dict[str, Tensor], grads: tuple[Tensor | None, ...],
                  rule: dict[str, tuple[float, float, float, Tensor | float]]) -> dict[str, Tensor]:
        ahead = {}
        for (name, p), g in zip(params.items(), grads):
            lr, wd, c, b = rule[name]
            g = torch.zeros_like(p) if g is None else g
            ahead[name] = p - lr * (c * (g + wd * p) + b)
        return ahead

    # -- the meta objective ------------------------------------------------------------------------

    @staticmethod
    def _functional(model: nn.Module) -> tuple[nn.Module, dict[str, Tensor], dict[str, Tensor]]:
        """The network with its generated head, its trainable parameters, and copies of its buffers (the
        look-ahead passes run in training mode on batch statistics and must not move W's BN statistics)."""
        full = WithGeneratedHead(model)
        params = {k: p for k, p in full.named_parameters() if p.requires_grad}
        buffers = {k: v.clone() for k, v in full.named_buffers()}
        return full, params, buffers

    def _losses_at(self, full: nn.Module, weights: dict[str, Tensor], buffers: dict[str, Tensor], batch: Batch,
                   soft: Tensor) -> Tensor:
        return self.labels.losses_from_outputs(call_with(full, {**weights, **buffers}, (batch.x,)), batch, soft)

    @staticmethod
    def _inner(losses: Tensor, loss_scale: Tensor | None, labelled: Tensor | None = None) -> Tensor:
        """W's objective on the batch: ℓ_main + τ·ℓ_aux, as the trainer scales it."""
        return scale_losses(losses, loss_scale, labelled).mean(0).sum()

    def theta2_terms(self, soft: Tensor) -> Tensor:
        """The terms of the meta objective that depend on θ2 directly: λ·Σ ȳ log ȳ, and the L1 penalty
        when ``maxl_penalty: l1`` (with l2 the penalty is θ2's SGD weight decay)."""
        terms = self.cfg.entropy_weight * negative_entropy(soft)
        if self.cfg.maxl_penalty == "l1":
            terms = terms + self.cfg.weight_decay * sum(p.abs().sum() for p in self.labels.label_net.parameters())
        return terms

    def meta_loss(self, model: nn.Module, batch: Batch, loss_scale: Tensor | None, optimizer: Any = None) -> Tensor:
        """Alg. 1's meta objective: the main loss after one look-ahead step of W on ℓ_main + τ·ℓ_aux, plus
        ``theta2_terms``; differentiable w.r.t. θ2 (second order through θ1⁺)."""
        full, params, buffers = self._functional(model)
        soft = self.labels.soft_labels(batch, track_hparams=True)
        inner = self._inner(self._losses_at(full, params, buffers, batch, soft), loss_scale, batch.labelled)
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=True, allow_unused=True)
        ahead = self.lookahead(params, grads, self.lookahead_rule(params, optimizer))
        main_after = self._losses_at(full, ahead, buffers, batch, soft.detach())[:, 0].mean()
        return main_after + self.theta2_terms(soft)

    def lookahead_direction(self, model: nn.Module, batch: Batch, loss_scale: Tensor | None, optimizer: Any = None,
                            w_gradient: bool = False) -> "LookAhead":
        """The first-order part both meta-gradients share: ∇θ1 L_T at θ1 (no graph), θ1⁺, ℓ_main(θ1⁺) and
        e = α·c·∇θ1⁺ ℓ_main(θ1⁺) per parameter (θ1⁺ moves with θ2 only through −α·c·∇θ1 L_T).
        ``w_gradient``: ∇θ1 L_T is W's ``.grad``, which W's step has just computed on ``batch`` (one forward
        and backward of W fewer)."""
        full, params, buffers = self._functional(model)
        soft = self.labels.soft_labels(batch, track_hparams=True)
        current = {k: p.detach() for k, p in params.items()}
        if w_gradient:
            grads = tuple(None if p.grad is None else p.grad.detach() for p in params.values())
        else:
            inner = self._inner(self._losses_at(full, params, buffers, batch, soft.detach()), loss_scale,
                                batch.labelled)
            grads = torch.autograd.grad(inner, list(params.values()), allow_unused=True)
        rule = self.lookahead_rule(params, optimizer)
        ahead = {k: v.detach().requires_grad_(True) for k, v in self.lookahead(current, grads, rule).items()}
        main_after = self._losses_at(full, ahead, buffers, batch, soft.detach())[:, 0].mean()
        d = torch.autograd.grad(main_after, list(ahead.values()), allow_unused=True)
        e = {k: (torch.zeros_like(p) if g is None else g.detach()) * (rule[k][0] * rule[k][2])
             for (k, p), g in zip(current.items(), d)}
        return LookAhead(full, current, buffers, soft, main_after.detach(), e)

    def coupling(self, ahead: "LookAhead", batch: Batch, loss_scale: Tensor | None) -> Tensor:
        """e · ∇θ1 L_T(θ1, ȳ(θ2)) as a function of θ2 (its value is not needed, only its gradient): the outputs'
        derivative along e by forward mode, dotted with ∂L_T/∂outputs built at the output level."""
        with fwAD.dual_level():
            dual = {k: fwAD.make_dual(p, ahead.e[k]) for k, p in ahead.current.items()}
            leaves, spec = tree_flatten(call_with(ahead.full, {**dual, **ahead.buffers}, (batch.x,)))
            unpacked = [fwAD.unpack_dual(o) for o in leaves]
        outputs = [u.primal.detach().requires_grad_(True) for u in unpacked]
        losses = self.labels.losses_from_outputs(tree_unflatten(outputs, spec), batch, ahead.soft)
        grad_outputs = torch.autograd.grad(self._inner(losses, loss_scale, batch.labelled), outputs,
                                           create_graph=True, allow_unused=True)
        terms = [(g * u.tangent).sum() for g, u in zip(grad_outputs, unpacked)
                 if g is not None and u.tangent is not None]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def meta_gradients(self, model: nn.Module, batch: Batch, loss_scale: Tensor | None, optimizer: Any = None,
                       w_gradient: bool = False) -> tuple[Tensor, list[Tensor]]:
        """(meta objective, its gradient w.r.t. θ2): the gradient of ``meta_loss``, computed as
        ∇θ2 (theta2_terms − coupling) (see the module's note on cost); ``w_gradient`` as in
        ``lookahead_direction``."""
        ahead = self.lookahead_direction(model, batch, loss_scale, optimizer, w_gradient)
        theta2 = list(self.labels.label_net.parameters())
        direct = self.theta2_terms(ahead.soft)
        grads = torch.autograd.grad(direct - self.coupling(ahead, batch, loss_scale), theta2, allow_unused=True)
        return (ahead.main_after + direct).detach(), [torch.zeros_like(p) if g is None else g
                                                      for g, p in zip(grads, theta2)]

    def before_w_step(self, method: Any, ctx: StepContext) -> dict[str, Any]:
        """``maxl_meta_batch: step``: θ2's update on W's batch at the W it steps from, taking ∇θ1 L_T from W's
        own gradient and the look-ahead's rate and momentum from the optimiser's state as W's step uses them."""
        if self.cfg.maxl_meta_batch != "step" or ctx.step % self.cfg.maxl_every:
            return {}
        gradient = [p.grad for p in ctx.params if p.grad is not None]
        # a non-finite W gradient: fp16's scaler will skip this W step, so θ2 waits too (without a scaler it is
        # W's fault, for the training guard to report)
        if not all_finite(gradient):
            return {}
        return self._update(ctx, ctx.batch, w_gradient=True)

    def step(self, method: Any, ctx: StepContext) -> dict[str, Any]:
        if self.cfg.maxl_meta_batch == "step" or ctx.step % self.cfg.maxl_every:
            return {}
        return self._update(ctx, ctx.train_batch(), w_gradient=False)

    def _update(self, ctx: StepContext, batch: Batch, w_gradient: bool) -> dict[str, Any]:
        """One SGD step of θ2 on the meta-gradient at the current W on ``batch``."""
        loss, grads = self.meta_gradients(ctx.model, batch, ctx.loss_scale, ctx.optimizer, w_gradient)
        # several processes: the mean of their shards' meta-gradients (the look-ahead step itself is per shard),
        # so that θ2 stays one network
        grads = mean_across(grads)
        theta2 = list(self.labels.label_net.parameters())
        # checked where they happen (two syncs per θ2 step): the meta objective and its gradient, then θ2
        if not (math.isfinite(float(loss)) and all_finite(grads)):
            raise FloatingPointError(
                f"MAXL's meta objective or its gradient w.r.t. θ2 is non-finite (meta loss {float(loss):.3g}, "
                f"max |θ2| = {max_abs(theta2):.3g}): lower methods.labels.lr (now {self.cfg.lr:g}), or the "
                f"look-ahead's rate (methods.labels.lookahead_lr, else the dataset's train.lr)")
        for p, g in zip(theta2, grads):
            p.grad = g
        with overflow_named("θ2's step", f"lower methods.labels.lr (now {self.cfg.lr:g})"):
            self.optimizer.step()
        if not all_finite(theta2):
            raise FloatingPointError(f"θ2 (MAXL's label network) became non-finite in its update: lower "
                                     f"methods.labels.lr (now {self.cfg.lr:g})")
        return {"meta_loss": float(loss)}

    def fault_suspects(self, keys: FaultKeys, step: int) -> list[Suspect]:
        """θ2: moved only by this update."""
        return [Suspect("θ2 (MAXL's label network)", [p.detach() for p in self.labels.label_net.parameters()],
                        f"lower {keys.method('labels', 'lr')} (now {self.cfg.lr:g})")]


class FirstOrderLookAhead(LookAheadUpdate):
    """MAXL with the reference's first-order approximation (``model_vgg_maxl_firstorder.py``, after DARTS):
    ∇θ2 ℓ_main(θ1⁺) = −α·c·∇²_{θ2,θ1} L_T · d with d = ∇ℓ_main(θ1⁺), and the mixed Hessian-vector product
    from a central difference of ∇θ2 L_T at θ1 ± ε·d, ε = ``maxl_fd_epsilon`` / ‖d‖. No second-order graph:
    two extra forwards without a graph, the difference taken at the soft labels, one backward through θ2's net."""

    def meta_gradients(self, model: nn.Module, batch: Batch, loss_scale: Tensor | None, optimizer: Any = None,
                       w_gradient: bool = False) -> tuple[Tensor, list[Tensor]]:
        theta2 = list(self.labels.label_net.parameters())
        ahead = self.lookahead_direction(model, batch, loss_scale, optimizer, w_gradient)
        d, soft = ahead.e, ahead.soft
        norm = torch.sqrt(sum((v * v).sum() for v in d.values()))
        direct = self.theta2_terms(soft)
        # ∇θ2 L_T = J_ȳᵀ ∂L_T/∂ȳ and the difference is linear: take it at the soft labels (forwards without a
        # graph) and backpropagate through the label network once, with the direct term
        pull = torch.zeros_like(soft)
        if float(norm) > 0:
            eps = self.cfg.maxl_fd_epsilon / norm
            sides = []
            for sign in (1.0, -1.0):
                shifted = {k: p + sign * eps * d[k] for k, p in ahead.current.items()}
                with torch.no_grad():
                    outputs = call_with(ahead.full, {**shifted, **ahead.buffers}, (batch.x,))
                targets = soft.detach().requires_grad_(True)
                losses = self.labels.losses_from_outputs(outputs, batch, targets)
                sides.append(torch.autograd.grad(self._inner(losses, loss_scale, batch.labelled), targets)[0])
            pull = (sides[0] - sides[1]) / (2 * eps)
        found = torch.autograd.grad(direct - (soft * pull).sum(), theta2, allow_unused=True)
        return (ahead.main_after + direct).detach(), [torch.zeros_like(p) if g is None else g.detach()
                                                      for g, p in zip(found, theta2)]


@dataclass
class LookAhead:
    """``LookAheadUpdate.lookahead_direction``'s result."""

    full: nn.Module  # the network with its generated head, for functional calls
    current: dict[str, Tensor]  # θ1, detached
    buffers: dict[str, Tensor]  # copies of its buffers (BN statistics)
    soft: Tensor  # ȳ(θ2), θ2 in the graph
    main_after: Tensor  # ℓ_main(θ1⁺), detached
    e: dict[str, Tensor]  # α·c·∇θ1⁺ ℓ_main(θ1⁺): the meta objective's sensitivity to −∇θ1 L_T
