"""Auxiliary-network registry: g(ℓ; φ) maps per-sample task losses [B, T] (or loss images [B, T, H, W]) to an extra loss [B]."""
from pipeline.registry import Registry

AUXNETS: Registry = Registry("auxiliary network")

from pipeline.auxnets import monotone  # noqa: E402,F401  (registers linear, deep_linear, nonlinear, convnet)

__all__ = ["AUXNETS"]
