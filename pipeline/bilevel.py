"""The bilevel engine (AuxiLearn Alg. 1 and 2): implicit-function-theorem hypergradients for any φ.

∇φ L_A(W*(φ)) = ∂L_A/∂φ − ∇W L_A · (∇²_W L_T)⁻¹ · ∇φ∇W L_T, with the inverse-Hessian-vector product
approximated by a J-term Neumann series  H⁻¹v ≈ α Σ_{j=0..J} (I − αH)^j v  (Lorraine et al., 2020).
Only vector-Hessian products are formed, by double backward through one retained graph of ∇W L_T,
which costs less than re-running a forward-over-reverse ``torch.func.jvp`` for each of the J terms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor


def _grads(out: Tensor, inputs: Sequence[Tensor], **kwargs) -> list[Tensor]:
    grads = torch.autograd.grad(out, inputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def neumann_hypergradient(
    train_loss: Tensor,
    aux_loss: Tensor,
    params: Sequence[Tensor],
    hparams: Sequence[Tensor],
    neumann_steps: int,
    neumann_lr: float,
) -> list[Tensor]:
    """Approximate dL_A/dφ at the current (W, φ), treating W as the inner optimum W*(φ).

    ``train_loss`` and ``aux_loss`` must be built from ``params`` (W) and, where they depend on them,
    ``hparams`` (φ). With ``neumann_steps`` → ∞ and ``neumann_lr`` < 2/λ_max(H) this is the exact IFT
    hypergradient; the paper's Alg. 2 omits the leading α, which only rescales φ's learning rate.
    """
    params, hparams = list(params), list(hparams)
    direct = _grads(aux_loss, hparams, retain_graph=True)
    v = [g.detach() for g in _grads(aux_loss, params, retain_graph=True)]
    dtrain_dw = _grads(train_loss, params, create_graph=True)
    p = [x.clone() for x in v]
    for _ in range(neumann_steps):
        hv = _grads(_dot(dtrain_dw, v), params, retain_graph=True)
        v = [vi - neumann_lr * hvi.detach() for vi, hvi in zip(v, hv)]
        p = [pi + vi for pi, vi in zip(p, v)]
    inverse_hvp = [neumann_lr * pi for pi in p]
    mixed = _grads(_dot(dtrain_dw, inverse_hvp), hparams)
    return [(d - m).detach() for d, m in zip(direct, mixed)]


@dataclass
class HyperStepStats:
    hypergrad_norm: float
    aux_loss: float


class HyperOptimizer:
    """Owns φ and its optimiser; every ``every`` inner steps it takes one IFT hypergradient step.

    Any method with auxiliary parameters (loss-combining networks, label generators) uses this.
    ``after_update`` runs after each φ step (e.g. clipping negative weights for monotone networks).
    """

    def __init__(
        self,
        hparams: Sequence[Tensor],
        *,
        lr: float,
        momentum: float,
        weight_decay: float,
        every: int,
        neumann_steps: int,
        neumann_lr: float,
        after_update: Callable[[], None] | None = None,
        max_norm: float | None = None,
    ) -> None:
        self.hparams = list(hparams)
        self.optimizer = torch.optim.SGD(self.hparams, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.every = every
        self.neumann_steps = neumann_steps
        self.neumann_lr = neumann_lr
        self.after_update = after_update
        self.max_norm = max_norm  # clip the hypergradient's total norm (a truncated Neumann series can spike)

    def due(self, step: int) -> bool:
        """Alg. 1: φ is updated after every block of ``every`` inner steps (``step`` counts from 1)."""
        return step % self.every == 0

    def step(self, train_loss: Tensor, aux_loss: Tensor, params: Sequence[Tensor]) -> HyperStepStats:
        grads = neumann_hypergradient(train_loss, aux_loss, params, self.hparams, self.neumann_steps, self.neumann_lr)
        norm = float(torch.sqrt(sum((g**2).sum() for g in grads)))  # before any clipping
        self.optimizer.zero_grad(set_to_none=True)
        for h, g in zip(self.hparams, grads):
            h.grad = g
        if self.max_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.hparams, self.max_norm)
        self.optimizer.step()
        if self.after_update is not None:
            self.after_update()
        return HyperStepStats(hypergrad_norm=norm, aux_loss=float(aux_loss.detach()))

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()
