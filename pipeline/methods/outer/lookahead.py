"""MAXL's outer update (Liu et al. 2019, Alg. 1): θ2 follows the main loss after a one-step look-ahead of W.

``LookAheadUpdate`` is the exact second-order meta-gradient (through ``torch.func.functional_call``);
``FirstOrderLookAhead`` the reference's finite-difference approximation. Options: ``methods.labels`` (see
``generators/labels.py``, which also documents how each default follows the authors' code)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from pipeline.core.distributed import mean_across
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
        return self.labels.losses_from_outputs(functional_call(full, {**weights, **buffers}, (batch.x,)), batch, soft)

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

    def meta_gradients(self, model: nn.Module, batch: Batch, loss_scale: Tensor | None, optimizer: Any = None
                       ) -> tuple[Tensor, list[Tensor]]:
        """(meta objective, its gradient w.r.t. θ2)."""
        loss = self.meta_loss(model, batch, loss_scale, optimizer)
        return loss.detach(), list(torch.autograd.grad(loss, list(self.labels.label_net.parameters())))

    def step(self, method: Any, ctx: StepContext) -> dict[str, Any]:
        if ctx.step % self.cfg.maxl_every:
            return {}
        batch = ctx.batch if self.cfg.maxl_meta_batch == "step" else ctx.train_batch()
        loss, grads = self.meta_gradients(ctx.model, batch, ctx.loss_scale, ctx.optimizer)
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
    two extra forward/backward passes instead."""

    def meta_gradients(self, model: nn.Module, batch: Batch, loss_scale: Tensor | None, optimizer: Any = None
                       ) -> tuple[Tensor, list[Tensor]]:
        theta2 = list(self.labels.label_net.parameters())
        full, params, buffers = self._functional(model)
        soft = self.labels.soft_labels(batch, track_hparams=True)
        current = {k: p.detach() for k, p in params.items()}
        inner = self._inner(self._losses_at(full, params, buffers, batch, soft.detach()), loss_scale, batch.labelled)
        grads = torch.autograd.grad(inner, list(params.values()), allow_unused=True)
        rule = self.lookahead_rule(params, optimizer)
        ahead = {k: v.detach().requires_grad_(True) for k, v in self.lookahead(current, grads, rule).items()}
        main_after = self._losses_at(full, ahead, buffers, batch, soft.detach())[:, 0].mean()
        d = torch.autograd.grad(main_after, list(ahead.values()), allow_unused=True)
        # θ1⁺ depends on θ2 through −α·c·∇θ1 L_T: scale d by α·c per parameter (one factor when uniform)
        d = {k: (torch.zeros_like(p) if g is None else g.detach()) * (rule[k][0] * rule[k][2])
             for (k, p), g in zip(current.items(), d)}
        norm = torch.sqrt(sum((v * v).sum() for v in d.values()))
        direct = self.theta2_terms(soft)
        meta = [torch.zeros_like(p) if g is None else g
                for g, p in zip(torch.autograd.grad(direct, theta2, retain_graph=True, allow_unused=True), theta2)]
        if float(norm) > 0:
            eps = self.cfg.maxl_fd_epsilon / norm
            sides = []
            for sign in (1.0, -1.0):
                shifted = {k: p + sign * eps * d[k] for k, p in current.items()}
                inner_s = self._inner(self._losses_at(full, shifted, buffers, batch, soft), loss_scale, batch.labelled)
                sides.append(torch.autograd.grad(inner_s, theta2, retain_graph=True, allow_unused=True))
            for i, (up, down) in enumerate(zip(*sides)):
                if up is not None and down is not None:
                    meta[i] = meta[i] - (up - down) / (2 * eps)
        return (main_after + direct).detach(), [m.detach() for m in meta]
