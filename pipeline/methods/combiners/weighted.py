"""Shared machinery of the loss-weighting baselines (Uncertainty, DWA, GradNorm, GCS, MGDA).

* ``WeightedSum``: L_T = Σ_j λ_j · mean_b ℓ_j, where ``applied`` holds the λ that the last ``backward``
  actually used, so ``task_weights`` logs the truth even when λ is computed inside ``backward``
  (from gradients) or changes after the step (learned weights).
* ``per_term_gradients`` / ``per_term_gradient_norms``: ∇_θ of every entry of a vector of loss terms,
  one batched backward pass (``is_grads_batched``) instead of one pass per term.
* ``task_terms``: the per-task batch-mean losses, optionally with the auxiliaries summed into one term.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import Tensor

from pipeline.methods.base import LossCombiner, MethodSpec, NoOuterUpdate, Roles


class WeightedSum(LossCombiner):
    """A combiner whose L_T is a weighted sum of the batch-mean task losses with weights ``applied`` [T]."""

    def __init__(self, num_tasks: int, cfg: Any = None) -> None:
        super().__init__(num_tasks, cfg)
        # A buffer: saved with the method's state, so the final weights of a run are in its checkpoint.
        self.register_buffer("applied", torch.ones(num_tasks))

    def training_loss(self, losses: Tensor) -> Tensor:
        """Σ_j λ_j · mean_b ℓ_j with the weights of the last step."""
        return (losses.mean(0) * self.applied).sum()

    def apply_weights(self, losses: Tensor, weights: Tensor) -> Tensor:
        """Record ``weights`` as this step's λ, backpropagate Σ_j λ_j mean_b ℓ_j; returns it detached."""
        self.applied.copy_(weights.detach())
        loss = self.training_loss(losses)
        loss.backward()
        return loss.detach()

    def task_weights(self, losses: Tensor) -> Tensor:
        return self.applied.detach().clone()


def task_terms(losses: Tensor, group_auxiliaries: bool = False) -> Tensor:
    """Batch-mean loss of every task [T], or [main, Σ auxiliaries] (2 terms) when ``group_auxiliaries``."""
    means = losses.mean(0)
    if group_auxiliaries and means.numel() > 1:
        return torch.stack([means[0], means[1:].sum()])
    return means


def _gradients_for_rows(terms: Tensor, inputs: Sequence[Tensor], rows: Tensor) -> Tensor:
    """∇_inputs (rows @ terms) for every row of ``rows`` [k, K]: flattened and concatenated, [k, P]."""
    inputs = list(inputs)
    try:
        grads = torch.autograd.grad(terms, inputs, grad_outputs=rows, retain_graph=True, allow_unused=True,
                                    is_grads_batched=True)
    except RuntimeError as err:
        # vmap has no batching rule for a few backward ops; a loop gives the same numbers (a genuine
        # autograd error, e.g. a freed graph, is raised again by the loop).
        # Python shows a warning once per place by default: no flag of our own needed.
        warnings.warn(f"batched per-term gradients unavailable ({err}); falling back to one pass per term")
        per_row = [torch.autograd.grad(terms, inputs, grad_outputs=row, retain_graph=True, allow_unused=True)
                   for row in rows]
        grads = tuple(
            torch.stack([g[i] if g[i] is not None else torch.zeros_like(x) for g in per_row])
            for i, x in enumerate(inputs)
        )
    k = rows.shape[0]
    return torch.cat(
        [(g if g is not None else torch.zeros(k, *x.shape, dtype=x.dtype, device=x.device)).reshape(k, -1)
         for g, x in zip(grads, inputs)],
        dim=1,
    )


def per_term_gradients(terms: Tensor, inputs: Sequence[Tensor]) -> Tensor:
    """Matrix [K, P] whose row k is ∇_inputs terms[k], flattened (P = total size of ``inputs``).

    The graph is retained so that the caller can still backpropagate through ``terms`` afterwards.
    Inputs a term does not depend on get zero gradient.
    """
    eye = torch.eye(terms.numel(), dtype=terms.dtype, device=terms.device)
    return _gradients_for_rows(terms.reshape(-1), inputs, eye)


def per_term_gradient_norms(terms: Tensor, inputs: Sequence[Tensor], chunk_size: int = 32) -> Tensor:
    """‖∇_inputs terms[k]‖₂ for every k [K], detached; at most ``chunk_size`` gradients held at once.

    Chunking bounds memory at chunk_size × P when there are many tasks (312 on CUB) and P is a whole layer.
    """
    flat = terms.reshape(-1)
    eye = torch.eye(flat.numel(), dtype=flat.dtype, device=flat.device)
    norms = [torch.linalg.vector_norm(_gradients_for_rows(flat, inputs, eye[i : i + chunk_size]), dim=1)
             for i in range(0, flat.numel(), chunk_size)]
    return torch.cat(norms).detach()


def unflatten_like(flat: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector [P] back into tensors shaped like ``params``."""
    out, offset = [], 0
    for p in params:
        out.append(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return out


def accumulate_grad(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    """p.grad += g (creating it when absent), the way ``Tensor.backward`` accumulates."""
    for p, g in zip(params, grads):
        g = g.detach().to(p.dtype)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.add_(g)


def weighting_method(name: str, combiner: type[WeightedSum], Config: Any, order: int, description: str) -> MethodSpec:
    """The registry entry of a loss-weighting baseline: its combiner and nothing else."""

    def build(num_tasks: int, cfg: Any, bilevel: Any, dataset: Any, data: Any, params: Any) -> Roles:
        return Roles(combiner(num_tasks, cfg), NoOuterUpdate(), None)

    return MethodSpec(name, build, group="weighting", order=order, Config=Config, config_section=name,
                      requires=frozenset({"auxiliaries"}), description=description)
