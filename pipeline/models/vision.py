"""Image classifiers for attribute-annotated datasets (CUB): a shared backbone and two linear heads.

f(x; W) = (species logits [B, C], attribute logits [B, A]): App. B.1 of the AuxiLearn paper puts
"a classification layer on top for all tasks" of a ResNet-18; here one linear layer gives the species
logits and one linear layer all attribute logits at once, both on the pooled backbone features z.

Backbones: ``small_cnn`` (conv-BN-ReLU-pool blocks; minutes on a CPU, for the stand-in data) and
``resnet18`` (torchvision's, never downloaded: ImageNet weights come only from a local file).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import Tensor, nn

from pipeline.core.registry import MODELS
from pipeline.models.base import MultiTaskNet

Backbone = Literal["small_cnn", "resnet18"]


class SmallCNN(nn.Module):
    """Four conv3x3-BN-ReLU blocks of widths w, 2w, 4w, 8w; max-pool between them, global average pool at the end."""

    def __init__(self, width: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        blocks: list[nn.Module] = []
        fan_in = in_channels
        for i, fan_out in enumerate(widths):
            last = i == len(widths) - 1
            blocks.append(nn.Sequential(
                nn.Conv2d(fan_in, fan_out, 3, padding=1, bias=False),  # BN supplies the bias
                nn.BatchNorm2d(fan_out),
                nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d(1) if last else nn.MaxPool2d(2),
            ))
            fan_in = fan_out
        self.blocks = nn.Sequential(*blocks)
        self.out_features = fan_in

    @property
    def last_block(self) -> nn.Module:
        return self.blocks[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x).flatten(1)


def load_resnet18_weights(net: torchvision.models.ResNet, path: str | Path) -> None:
    """Load a local ResNet-18 state dict (e.g. torchvision's ``resnet18-f37072fd.pth``) into ``net`` (fc removed).

    ``weights_only=True``: a checkpoint file is data, never code. The classifier ``fc`` is dropped
    because our heads replace it; every other tensor must match, so a wrong file fails loudly.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_weights: {path} does not exist (weights are never downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"pretrained_weights: {path} is not a tensor-only checkpoint: {err}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"pretrained_weights: {path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"pretrained_weights: {path} is not a ResNet-18 state dict "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")


def image_backbone(backbone: Backbone = "small_cnn", width: int = 32, pretrained_weights: str | None = None
                   ) -> tuple[nn.Module, int]:
    """The backbone (images -> pooled features) and its feature count."""
    if backbone == "small_cnn":
        if pretrained_weights:
            raise ValueError("pretrained_weights is only supported with the resnet18 backbone")
        net = SmallCNN(width)
        return net, net.out_features
    if backbone == "resnet18":
        res = torchvision.models.resnet18(weights=None)
        features = res.fc.in_features
        res.fc = nn.Identity()  # our heads take the pooled 512-d features
        if pretrained_weights:
            load_resnet18_weights(res, pretrained_weights)
        return res, features
    raise ValueError(f"unknown backbone {backbone!r}; known: small_cnn, resnet18")


@MODELS.register("image_multihead")
class MultiHeadImageNet(MultiTaskNet):
    """Shared backbone → z (pooled features) → species head and attribute head; with ``aux_outputs`` > 0 a
    third head of generated-task logits (label learning: ``decode`` then returns ((species, attributes), aux))."""

    def __init__(self, num_classes: int, num_attributes: int, backbone: Backbone = "small_cnn", width: int = 32,
                 pretrained_weights: str | None = None, aux_outputs: int = 0) -> None:
        super().__init__()
        self.backbone, features = image_backbone(backbone, width, pretrained_weights)
        self.backbone_kind = backbone
        self.species_head = nn.Linear(features, num_classes)
        self.attribute_head = nn.Linear(features, num_attributes)
        self.aux_head = nn.Linear(features, aux_outputs) if aux_outputs else None
        self.has_generated_head = bool(aux_outputs)

    def encode(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def decode(self, z: Tensor) -> tuple:
        outputs = (self.species_head(z), self.attribute_head(z))
        return outputs if self.aux_head is None else (outputs, self.aux_head(z))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The backbone's last block (small_cnn: the last conv-BN; resnet18: ``layer4[-1]``)."""
        last = self.backbone.last_block if self.backbone_kind == "small_cnn" else self.backbone.layer4[-1]
        return list(last.parameters())
