"""Gradient Cosine Similarity (Du, Czarnecki, Jayakumar, Farajtabar, Pascanu & Lakshminarayanan, 2018,
"Adapting auxiliary losses using gradient similarity", Alg. 1 and 2).

On the shared trunk θ, with g_main = ∇_θ ℓ_main and g_k = ∇_θ ℓ_k for each auxiliary term k:

* unweighted: θ.grad = g_main + Σ_k [cos(g_main, g_k) > 0] · g_k
* weighted:   θ.grad = g_main + Σ_k max(0, cos(g_main, g_k)) · g_k

Task-specific parameters (heads) get the plain gradient of ℓ_main + Σ_k ℓ_k: the gate acts on the trunk
only, as in the paper. ℓ are batch-mean losses. With ``group_auxiliaries`` (the default, as AuxiLearn
ran it, App. B.1) the auxiliaries form a single term Σ_k ℓ_k and share one gate; otherwise every auxiliary
is tested on its own. The reported L_T and task weights are the trunk's: ℓ_main + Σ_k gate_k ℓ_k.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from pipeline.core.schema import StrictModel
from pipeline.methods.base import SharedTrunk, register
from pipeline.methods.combiners.weighted import weighting_method, WeightedSum, accumulate_grad, per_term_gradients, task_terms, unflatten_like


class GCSConfig(StrictModel):
    variant: Literal["unweighted", "weighted"] = Field(
        "unweighted", description="unweighted: add g_aux iff cos > 0; weighted: add max(0, cos)·g_aux")
    group_auxiliaries: bool = Field(
        True, description="sum all auxiliaries into one term before the similarity test (AuxiLearn App. B.1)")


def similarity_gates(grads: Tensor, variant: str) -> Tensor:
    """Gate of every auxiliary term given per-term gradients [1 + K, P] (row 0: main) → [K]."""
    main, aux = grads[0], grads[1:]
    # cos = 0 when either gradient vanishes: such a term is dropped (it carries nothing anyway).
    norms = torch.linalg.vector_norm(aux, dim=1) * torch.linalg.vector_norm(main)
    cos = torch.where(norms > 0, aux @ main / norms.clamp_min(1e-30), torch.zeros_like(norms))
    return (cos > 0).to(grads.dtype) if variant == "unweighted" else cos.clamp_min(0)


class GCS(WeightedSum):
    rewrites_gradients = True  # the trunk's .grad is replaced by the gated sum after the backward

    def __init__(self, num_tasks: int, cfg: GCSConfig | None = None) -> None:
        super().__init__(num_tasks, cfg)

    def backward(self, losses: Tensor, shared: SharedTrunk) -> Tensor:
        grouped = self.cfg.group_auxiliaries
        terms = task_terms(losses, grouped)
        grads = per_term_gradients(terms, shared.params)  # [1 + K, P]
        gates = similarity_gates(grads, self.cfg.variant)
        trunk_grad = grads[0] + gates @ grads[1:]

        weights = torch.ones_like(self.applied)
        weights[1:] = gates.expand(self.num_tasks - 1) if grouped else gates  # grouped: one gate for all
        self.applied.copy_(weights)

        # Plain sum for every parameter, then replace its contribution on the trunk by the gated sum:
        # keep whatever the trunk's .grad held before, so nothing is counted twice.
        before = [None if p.grad is None else p.grad.detach().clone() for p in shared.params]
        losses.mean(0).sum().backward()
        for p, old in zip(shared.params, before):
            p.grad = old
        accumulate_grad(shared.params, unflatten_like(trunk_grad, shared.params))
        return (terms[0] + (gates * terms[1:]).sum()).detach()


register(weighting_method("gcs", GCS, GCSConfig, order=3, description=__doc__.splitlines()[0]))
