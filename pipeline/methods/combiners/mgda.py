"""MGDA / MGDA-UB (Sener & Koltun, NeurIPS 2018, "Multi-task learning as multi-objective optimization").

Each step finds the min-norm point of the convex hull of the per-task gradients,

    α* = argmin_{α ∈ Δ^T} ‖Σ_j α_j g_j‖²,

with the paper's Frank-Wolfe solver (Algorithm 2: each iteration moves toward the vertex e_t̂ with
t̂ = argmin_r (Mα)_r, step size from the exact two-vector solution of Algorithm 1), M the Gram matrix of
the g_j. α starts at the best pair's solution, as in the authors' code (Algorithm 2 starts uniform). W then receives ∇_W Σ_j α*_j mean_b ℓ_j.

* ``upper_bound`` (MGDA-UB, §3.3): g_j = ∇_z mean_b ℓ_j w.r.t. the shared representation z of the batch
  (flattened) instead of w.r.t. the shared parameters: one backward through the heads only.
* ``normalization`` as in the authors' code: g_j is divided by 1 ("none"), ℓ_j ("loss"), ‖g_j‖ ("l2"),
  or ℓ_j·‖g_j‖ ("loss+") before solving; α* is then applied to the unnormalised losses, as in that code.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from pipeline.core.schema import StrictModel
from pipeline.methods.base import SharedTrunk, register
from pipeline.methods.combiners.weighted import weighting_method, WeightedSum, per_term_gradients, task_terms


class MGDAConfig(StrictModel):
    upper_bound: bool = Field(True, description="MGDA-UB: gradients w.r.t. the shared representation z")
    normalization: Literal["none", "loss", "l2", "loss+"] = Field(
        "loss+", description="divide g_j by 1, ℓ_j, ‖g_j‖ or ℓ_j·‖g_j‖ before solving")
    max_iter: int = Field(250, ge=0, description="Frank-Wolfe iterations at most (authors' code: 250)")
    tol: float = Field(1e-5, ge=0, description="stop when Σ_j |Δα_j| falls below this (authors' code: 1e-5)")


def min_norm_two(v1v1: Tensor | float, v1v2: Tensor | float, v2v2: Tensor | float) -> Tensor:
    """γ ∈ [0, 1] minimising ‖γ θ₁ + (1−γ) θ₂‖² from θ₁ᵀθ₁, θ₁ᵀθ₂, θ₂ᵀθ₂ (Algorithm 1 of the paper).

    Elementwise, so that all pairs of a Gram matrix are solved at once.
    """
    v1v1, v1v2, v2v2 = (torch.as_tensor(v, dtype=torch.float64) for v in (v1v1, v1v2, v2v2))
    denom = v1v1 + v2v2 - 2.0 * v1v2  # ‖θ₁ − θ₂‖² > 0 whenever neither end is the answer
    gamma = (v2v2 - v1v2) / torch.where(denom > 0, denom, torch.ones_like(denom))
    gamma = torch.where(v1v2 >= v2v2, torch.zeros_like(gamma), gamma)
    return torch.where(v1v2 >= v1v1, torch.ones_like(gamma), gamma)  # θ₁ itself is the segment's min-norm point


def best_pair_start(m: Tensor) -> Tensor:
    """The min-norm point over all segments [g_i, g_j] as a point of the simplex (authors' initialisation)."""
    n = m.shape[0]
    diag = torch.diagonal(m)
    v1v1, v2v2 = diag.unsqueeze(1).expand(n, n), diag.unsqueeze(0).expand(n, n)
    gamma = min_norm_two(v1v1, m, v2v2)  # [n, n]: weight on g_i of the pair (i, j)
    cost = gamma**2 * v1v1 + 2 * gamma * (1 - gamma) * m + (1 - gamma) ** 2 * v2v2
    i, j = divmod(int(torch.argmin(cost)), n)
    alpha = torch.zeros(n, dtype=m.dtype)
    alpha[i] += gamma[i, j]
    alpha[j] += 1 - gamma[i, j]
    return alpha


def frank_wolfe_min_norm(gram: Tensor, max_iter: int = 250, tol: float = 1e-5) -> Tensor:
    """α on the simplex minimising αᵀ M α for the Gram matrix M [T, T] (Algorithm 2 of the paper).

    Starts from the best pair (exact for T = 2) as the authors' code does, rather than from the uniform α
    of Algorithm 2: Frank-Wolfe converges only sublinearly, so a good start matters for the answer.
    """
    dtype, device = gram.dtype, gram.device
    m = gram.detach().to("cpu", torch.float64)  # T × T is tiny: solve on the CPU, in double precision
    alpha = best_pair_start(m)
    for _ in range(max_iter):
        m_alpha = m @ alpha
        t = int(torch.argmin(m_alpha))
        gamma = min_norm_two(alpha @ m_alpha, m_alpha[t], m[t, t])  # weight kept on the current point
        new = gamma * alpha
        new[t] += 1.0 - gamma
        change = float((new - alpha).abs().sum())
        alpha = new
        if change < tol:
            break
    return alpha.to(device=device, dtype=dtype)


def normalizers(grads: Tensor, task_losses: Tensor, kind: str) -> Tensor:
    """Per-task divisor of the gradients [T] (the authors' ``gradient_normalizers``)."""
    eps = 1e-12
    if kind == "none":
        return torch.ones_like(task_losses)
    if kind == "loss":
        return task_losses.clamp_min(eps)
    norms = torch.linalg.vector_norm(grads, dim=1).clamp_min(eps)
    return norms if kind == "l2" else norms * task_losses.clamp_min(eps)


class MGDA(WeightedSum):
    def __init__(self, num_tasks: int, cfg: MGDAConfig | None = None) -> None:
        super().__init__(num_tasks, cfg)

    def solve(self, losses: Tensor, shared: SharedTrunk) -> Tensor:
        """α* [T] for this batch."""
        terms = task_terms(losses)
        wrt = [shared.representation] if self.cfg.upper_bound else shared.params
        grads = per_term_gradients(terms, wrt).detach()  # [T, P]
        grads = grads / normalizers(grads, terms.detach(), self.cfg.normalization).unsqueeze(1)
        return frank_wolfe_min_norm(grads @ grads.T, self.cfg.max_iter, self.cfg.tol)  # one batched Gram

    def backward(self, losses: Tensor, shared: SharedTrunk) -> Tensor:
        return self.apply_weights(losses, self.solve(losses, shared))


register(weighting_method("mgda", MGDA, MGDAConfig, order=4, description=__doc__.splitlines()[0]))
