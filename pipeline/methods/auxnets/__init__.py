"""Auxiliary networks g(ℓ; φ): per-sample task losses [B, T] (or loss images [B, T, H, W]) to an extra loss [B];
registered in ``pipeline.core.registry.AUXNETS``."""
