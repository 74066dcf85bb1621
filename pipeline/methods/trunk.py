"""What a method may need to know of the primary network before it exists (the trainer builds the method first):
the size of a sample's feature and the trunk's layers. Shared by JTDS (its scheduler reads each sample's
feature) and MAOAL (its importances are per module of the trunk)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn


def sample_features(z: Tensor) -> Tensor:
    """One feature vector per sample [B, C] from the shared representation z: [B] -> [B, 1], [B, C] as is, and
    [B, C, *positions] (points, pixels) averaged over the positions."""
    if z.dim() == 1:
        return z[:, None]
    return z.flatten(2).mean(2) if z.dim() > 2 else z


def probe_trunk(dataset: Any, data: Any, params: Any) -> tuple[nn.Module, Tensor]:
    """A throwaway primary network of the run's dataset and its z for two training inputs (eval mode, no
    gradient). Drawn under a forked RNG, so building it moves no random stream of the method or of W."""
    model_cfg = params.profile.model if params is not None else None
    with torch.random.fork_rng(devices=[]):
        model = dataset.build_model(data, model_cfg)
        model.eval()
        with torch.no_grad():
            x, _ = dataset.batch_transform(data.inputs[:2], data.targets[:2], train=False)
            z = model.encode(x)
    return model, z


def trunk_modules(shapes: Sequence[torch.Size], modules: int) -> list[int]:
    """The module of each trunk parameter tensor (in ``shared_parameters()`` order, which is depth order): a
    layer starts at every tensor with ≥ 2 dimensions (a weight matrix or kernel; its bias and norm parameters
    follow it) and at the first tensor; the layers are cut into ``min(modules, layers)`` contiguous groups of
    near-equal layer counts, so module 0 is the input side of the trunk."""
    if not shapes:
        raise ValueError("the primary network exposes no shared (trunk) parameters to group into modules")
    layer_of, layer = [], -1
    for i, shape in enumerate(shapes):
        if i == 0 or len(shape) >= 2:
            layer += 1
        layer_of.append(layer)
    groups = np.array_split(np.arange(layer + 1), min(modules, layer + 1))
    module_of_layer = {int(l): g for g, members in enumerate(groups) for l in members}
    return [module_of_layer[l] for l in layer_of]
