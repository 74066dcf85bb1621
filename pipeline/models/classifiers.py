"""Image classifiers for the learned-auxiliary-task experiments (AuxiLearn §5.4, App. B.3; MAXL §4).

f(x; W) = main logits [B, C] from a backbone's pooled features z [B, F] through one linear head; with
``aux_outputs > 0`` a second linear head on the same z gives the auxiliary logits [B, K] that a
generated auxiliary task (MAXL, AuxiLearn's label generator) is trained on. The label generator itself
is the same class with one head (``aux_outputs = 0``), so primary and auxiliary networks share their
architecture, as in the papers.

Backbones (for 32 x 32 inputs unless said, any channel count ``in_channels``; never downloaded, trained from
scratch as in the paper):

* ``vgg16``: torchvision's VGG-16 feature configuration ("D": 13 conv3x3 layers in 5 stages, each stage
  ending in a 2x2 max-pool) with BatchNorm; 32 px become 1 x 1 after the five pools, so z is the flattened
  last map, 512·width features. AuxiLearn and MAXL use it for CIFAR-10/100.
* ``convnet4``: the "4-layer ConvNet" of AuxiLearn's SVHN experiment: four conv3x3-BN-ReLU-maxpool2 blocks
  of 64 channels (the few-shot "Conv-4"), the last 2 x 2 map flattened: 4·64·width features.
* ``resnet18``: torchvision's ResNet-18 (fc removed, z = its 512 pooled features), optionally with the
  usual 32-px stem (3x3 stride-1 first conv, no max-pool) instead of the ImageNet 7x7/stride-2 + pool.
* ``mnist_net``: the small network of MAXL's MNIST row (Table 1, "2-layer NN"; the paper gives no details and
  the authors' public code has no MNIST model): two conv5x5-BN-ReLU-maxpool2 blocks of 32 and 64 channels for
  28 x 28 inputs, the last 7 x 7 map flattened: 64·7·7·width features, on which the task heads sit.

* ``resnet50``: ResNet-50 (MAXL Table 1's CINIC-10 and PASCAL-VOC12S network): torchvision's bottleneck blocks
  in stages of 3, 4, 6, 3, with channels scaled by ``width`` (at width 1 the layers of torchvision's ``resnet50``
  without its fc; z = 2048·width pooled features), and the same optional 32-px stem.

``width`` multiplies every channel count (rounded, at least 1): 1 is the papers' size; the CPU-sized
stand-in defaults use a fraction (see ``pipeline.datasets.shared.image_classification``). ResNet-18 comes only at width 1.
"""
from __future__ import annotations

from typing import Literal, Sequence

from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.resnet import Bottleneck
from torchvision.models.vgg import cfgs as VGG_CONFIGS

from pipeline.core.registry import MODELS
from pipeline.models.base import MultiTaskNet

Backbone = Literal["vgg16", "convnet4", "resnet18", "resnet50", "mnist_net"]
BACKBONES: tuple[str, ...] = ("vgg16", "convnet4", "resnet18", "resnet50", "mnist_net")
CONVNET4_CHANNELS = 64
CONVNET4_POOLED = 2  # the last map is pooled to 2 x 2 (its size for 32-px inputs) and flattened
MNIST_NET_CHANNELS = (32, 64)
MNIST_NET_POOLED = 7  # the last map is pooled to 7 x 7 (its size for 28-px inputs) and flattened


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, rounded, at least 1."""
    return max(1, round(channels * width))


def conv_bn_relu(fan_in: int, fan_out: int, kernel: int = 3) -> nn.Sequential:
    # No conv bias: the BatchNorm supplies it. "Same" padding: only the pools shrink the map.
    return nn.Sequential(nn.Conv2d(fan_in, fan_out, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(fan_out), nn.ReLU(inplace=True))


class Backbone2d(nn.Module):
    """x [B, C, H, W] -> z [B, out_features]; ``last_block`` is the module whose parameters GradNorm watches."""

    out_features: int

    @property
    def last_block(self) -> nn.Module:
        raise NotImplementedError


class VGG16Features(Backbone2d):
    """torchvision's VGG-16 ("D") layer list with BatchNorm, channels scaled; one conv-BN-ReLU unit per conv."""

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = in_channels
        for item in VGG_CONFIGS["D"]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                fan_out = scaled(int(item), width)
                layers.append(conv_bn_relu(fan_in, fan_out))
                fan_in = fan_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # identity on the 1 x 1 map of a 32-px input; other sizes still work
        self.out_features = fan_in
        self._last_conv = max(i for i, m in enumerate(layers) if isinstance(m, nn.Sequential))

    @property
    def last_block(self) -> nn.Module:
        return self.features[self._last_conv]  # the 13th conv-BN-ReLU

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)


class ConvNet4(Backbone2d):
    """Four conv3x3-BN-ReLU-maxpool2 blocks (64·width channels each); the last map pooled to 2 x 2 and flattened."""

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        channels = scaled(CONVNET4_CHANNELS, width)
        blocks = []
        fan_in = in_channels
        for _ in range(4):
            blocks.append(nn.Sequential(*conv_bn_relu(fan_in, channels), nn.MaxPool2d(2)))
            fan_in = channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(CONVNET4_POOLED)
        self.out_features = channels * CONVNET4_POOLED**2

    @property
    def last_block(self) -> nn.Module:
        return self.blocks[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.blocks(x)).flatten(1)


class MnistNet(Backbone2d):
    """Two conv5x5-BN-ReLU-maxpool2 blocks (32·width, 64·width channels); the last map pooled to 7 x 7, flattened."""

    def __init__(self, width: float = 1.0, in_channels: int = 1) -> None:
        super().__init__()
        blocks = []
        fan_in = in_channels
        for channels in MNIST_NET_CHANNELS:
            fan_out = scaled(channels, width)
            blocks.append(nn.Sequential(*conv_bn_relu(fan_in, fan_out, kernel=5), nn.MaxPool2d(2)))
            fan_in = fan_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(MNIST_NET_POOLED)  # identity on the 7 x 7 map of a 28-px input
        self.out_features = fan_in * MNIST_NET_POOLED**2

    @property
    def last_block(self) -> nn.Module:
        return self.blocks[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.blocks(x)).flatten(1)


class ResNet18Features(Backbone2d):
    """torchvision's ResNet-18 without its fc; ``small_stem`` swaps the ImageNet stem for a 3x3 stride-1 conv."""

    def __init__(self, small_stem: bool = True, in_channels: int = 3) -> None:
        super().__init__()
        net = resnet18(weights=None)
        if small_stem:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.out_features = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    @property
    def last_block(self) -> nn.Module:
        return self.net.layer4[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# ---------------------------------------------------------------------------------------------- ResNet-50 (MAXL)

RESNET50_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (bottleneck planes, blocks) per stage


class ResNet50Features(Backbone2d):
    """ResNet-50 from torchvision's ``Bottleneck`` blocks with every channel count scaled by ``width`` (torchvision's
    own class fixes the widths, and MAXL's ResNet-50 at full width is far too slow for a CPU stand-in); at width 1
    its layers are those of ``torchvision.models.resnet50`` without the fc, initialised the same way."""

    def __init__(self, width: float = 1.0, small_stem: bool = True, in_channels: int = 3) -> None:
        super().__init__()
        stem = scaled(64, width)
        if small_stem:
            head = [nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
        else:
            head = [nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, stride=2, padding=1)]
        stages: list[nn.Module] = []
        fan_in = stem
        for i, (planes, blocks) in enumerate(RESNET50_STAGES):
            planes, stride = scaled(planes, width), 1 if i == 0 else 2
            fan_out = planes * Bottleneck.expansion
            down = nn.Sequential(nn.Conv2d(fan_in, fan_out, 1, stride=stride, bias=False), nn.BatchNorm2d(fan_out))
            layer = [Bottleneck(fan_in, planes, stride, down)] + [Bottleneck(fan_out, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layer))
            fan_in = fan_out
        self.stem = nn.Sequential(*head)
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = fan_in
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def last_block(self) -> nn.Module:
        return self.stages[-1][-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)


def build_backbone(backbone: str, width: float = 1.0, small_stem: bool = True, in_channels: int = 3) -> Backbone2d:
    """One of ``BACKBONES`` for images of ``in_channels`` channels; ``width`` scales channels (``resnet18``: 1 only),
    ``small_stem`` is ResNet's 32-px stem."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    if backbone == "vgg16":
        return VGG16Features(width, in_channels)
    if backbone == "convnet4":
        return ConvNet4(width, in_channels)
    if backbone == "mnist_net":
        return MnistNet(width, in_channels)
    if backbone == "resnet18":
        if width != 1:
            raise ValueError(f"the resnet18 backbone has no width setting (got width = {width}; use 1)")
        return ResNet18Features(small_stem, in_channels)
    if backbone == "resnet50":
        return ResNet50Features(width, small_stem, in_channels)
    raise ValueError(f"unknown backbone {backbone!r}; known: {', '.join(BACKBONES)}")


@MODELS.register("image_classifier")
class ImageClassifier(MultiTaskNet):
    """backbone -> z [B, F] -> main logits [B, C], plus auxiliary logits [B, aux_outputs] when asked for.

    ``decode`` returns the main logits alone when ``aux_outputs == 0`` and ``(main, aux)`` otherwise, so
    the same class serves as the primary network, the primary network with a generated-task head, and
    (with ``num_classes`` = the number of auxiliary classes) the label generator.
    """

    def __init__(self, num_classes: int, backbone: str = "vgg16", width: float = 1.0, aux_outputs: int = 0,
                 small_stem: bool = True, given_classes: Sequence[int] = (), in_channels: int = 3) -> None:
        super().__init__()
        if num_classes < 1 or aux_outputs < 0 or any(c < 1 for c in given_classes):
            raise ValueError(f"num_classes and given_classes must be >= 1 and aux_outputs >= 0, got {num_classes}, "
                             f"{list(given_classes)}, {aux_outputs}")
        self.backbone = build_backbone(backbone, width, small_stem, in_channels)
        self.head = nn.Linear(self.backbone.out_features, num_classes)
        self.aux_head = nn.Linear(self.backbone.out_features, aux_outputs) if aux_outputs else None
        self.has_generated_head = bool(aux_outputs)
        # Heads of given auxiliary classification tasks (CIFAR-100's other label level, a dataset pair's auxiliary
        # dataset), drawn last so that the other heads start as they do without them.
        self.given_heads = nn.ModuleList(nn.Linear(self.backbone.out_features, c) for c in given_classes)

    def encode(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def decode(self, z: Tensor) -> Tensor | tuple:
        """Main logits; with given heads (main, *given); with a generated head (that, generated)."""
        logits = self.head(z)
        given = (logits, *(h(z) for h in self.given_heads)) if len(self.given_heads) else logits
        if self.aux_head is None:
            return given
        return given, self.aux_head(z)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The backbone's last block: VGG-16's last conv-BN, ConvNet-4's and mnist_net's last block, ResNet-18's
        ``layer4[-1]``, ResNet-50's last bottleneck."""
        return list(self.backbone.last_block.parameters())
