"""Auxiliary-network registry: g(ℓ; φ) maps per-sample task losses [B, T] to an extra loss [B]."""
from pipeline.registry import Registry

AUXNETS: Registry = Registry("auxiliary network")

from pipeline.auxnets import mlp  # noqa: E402,F401  (registers linear, deep_linear, nonlinear)

__all__ = ["AUXNETS"]
