"""A linear auxiliary network over a polynomial kernel of the losses (AuxiLearn App. C.5, Figure 8).

g(ℓ; φ) = Σ_m φ_m · Π_j ℓ_j^{e_mj} over every monomial m of the T losses (the main one included) of total
degree 1..``degree``: T = 3 and degree 2 give ℓ₁, ℓ₂, ℓ₃, ℓ₁², ℓ₁ℓ₂, ..., ℓ₃² (9 terms). g carries the main
task's terms itself (no skip connection), so the learned φ_m says how much each term, linear or not, draws the
primary network. It starts at Equal's weighting: the main linear term at 1, every auxiliary linear term at
``init_weight``, every higher-order term at 0. Weights are clipped at 0 after each update (losses are ≥ 0, so
g is then non-decreasing in every loss), or left free with ``positive_weights="none"`` (App. C.2).
"""
from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from pipeline.core.registry import AUXNETS
from pipeline.methods.auxnets.monotone import MonotoneNet

TERM_PREFIX = "term_"  # logged per step as term_<e_1>_<e_2>_..._<e_T> (the exponents), see ``term_key``


def monomial_exponents(num_tasks: int, degree: int) -> list[tuple[int, ...]]:
    """Exponent vectors of every monomial of ``num_tasks`` variables of total degree 1..``degree``, by degree
    and then in the order of ``itertools.combinations_with_replacement`` (ℓ₁ℓ₂ before ℓ₁ℓ₃)."""
    out = []
    for d in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(range(num_tasks), d):
            out.append(tuple(combo.count(j) for j in range(num_tasks)))
    return out


def term_key(exponents: tuple[int, ...]) -> str:
    return TERM_PREFIX + "_".join(str(e) for e in exponents)


def term_name(exponents: tuple[int, ...], task_names: list[str]) -> str:
    """``seg²·depth`` from exponents (2, 1, 0) and task names (seg, depth, normal)."""
    powers = {1: "", 2: "²", 3: "³"}
    return "·".join(f"{task_names[j]}{powers.get(e, f'^{e}')}" for j, e in enumerate(exponents) if e)


def parse_term_key(key: str) -> tuple[int, ...] | None:
    """The exponents of a ``term_key``, or None when ``key`` is not one."""
    if not key.startswith(TERM_PREFIX):
        return None
    parts = key[len(TERM_PREFIX):].split("_")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


class PolynomialNet(nn.Module):
    """[B, T] losses -> [B]: φ · (every monomial of the losses up to ``degree``)."""

    main_skip = False  # the main task's terms are g's own

    def __init__(self, num_tasks: int, degree: int = 2, init_weight: float = 1.0,
                 positive_weights: str = "clip") -> None:
        super().__init__()
        if degree < 1:
            raise ValueError(f"polynomial auxiliary network: degree must be >= 1, got {degree}")
        if positive_weights not in ("clip", "none"):
            raise ValueError(f"polynomial auxiliary network: positive_weights must be clip or none (a linear network "
                             f"over the terms), got {positive_weights!r}")
        self.exponents = monomial_exponents(num_tasks, degree)
        # the exponents [P, T]; no longer read, but kept in the state: stored method states carry it (strict loading)
        self.register_buffer("powers", torch.tensor(self.exponents, dtype=torch.float32))
        # each monomial as ``degree`` factor indices, padded with index T (a column of ones): products of
        # gathered losses have finite derivatives of every order at a loss of 0, where x ** 0 does not
        # (autograd's second pass meets 0 · x⁻¹ = 0 · ∞ = NaN; a masked task's loss is exactly 0)
        factors = [[j for j, e in enumerate(exps) for _ in range(e)] for exps in self.exponents]
        self.register_buffer("factors", torch.tensor([f + [num_tasks] * (degree - len(f)) for f in factors]),
                             persistent=False)  # [P, degree]
        start = torch.zeros(len(self.exponents))
        for m, e in enumerate(self.exponents):
            if sum(e) == 1:
                start[m] = 1.0 if e[0] == 1 else init_weight
        self.weight = nn.Parameter(start)
        self.positive_weights = positive_weights

    def terms(self, losses: Tensor) -> Tensor:
        """[B, T] -> [B, P] monomials (x**0 = 1, also at a loss of 0)."""
        padded = torch.cat([losses, losses.new_ones(losses.shape[0], 1)], dim=1)  # [B, T + 1]
        return padded[:, self.factors].prod(-1)

    def forward(self, losses: Tensor) -> Tensor:
        if losses.dim() != 2:
            raise ValueError(f"the polynomial auxiliary network takes per-sample losses [B, T], got {tuple(losses.shape)}")
        return self.terms(losses) @ self.weight

    def calibrate(self, losses: Tensor) -> None:
        """Nothing to do: at the start only the linear terms are non-zero, so they are the effective weights."""

    @torch.no_grad()
    def project(self) -> None:
        if self.positive_weights == "clip":
            self.weight.clamp_(min=0.0)

    effective_weights = MonotoneNet.effective_weights  # batch-mean ∂g/∂ℓ_j by autograd, as for every g

    def term_weights(self) -> dict[str, Tensor]:
        """φ per term, keyed by ``term_key`` (what the combiner logs each step for Figure 8)."""
        w = self.weight.detach()
        return {term_key(e): w[m] for m, e in enumerate(self.exponents)}


def build(num_tasks: int, *, degree: int = 2, init_weight: float = 1.0, positive_weights: str = "auto",
          **_unused: object) -> PolynomialNet:
    """The registry's builder; the keys of other auxiliary networks (hidden sizes, channels) do not apply."""
    return PolynomialNet(num_tasks, degree, init_weight, "clip" if positive_weights == "auto" else positive_weights)


AUXNETS.add("polynomial", build)
