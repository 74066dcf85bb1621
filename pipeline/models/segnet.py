"""SegNet-style encoder-decoder for dense multi-task prediction (NYUv2: AuxiLearn §5.3, App. B.2).

As in Liu et al. (2019b), whose SegNet the paper uses: the whole encoder-decoder is shared, and each
task has a small head on its last feature map. Encoder stage s has ``width * 2**min(s, 3)`` channels
(SegNet proper: width 64 and 5 stages, i.e. 64, 128, 256, 512, 512) made of two conv3x3-BN-ReLU
blocks and a 2x2 max-pool whose indices the mirrored decoder stage uses to unpool. The last decoder
block outputs ``width`` channels at the input resolution: that map is z.

Heads (on z): segmentation logits (``num_classes`` channels), depth (1 channel, unconstrained) and
surface normals (3 channels, normalised to unit length per pixel). ``decode`` returns
``(seg_logits [B, C, H, W], depth [B, 1, H, W], normal [B, 3, H, W])``. Cityscapes (App. C.8) adds coarser
segmentations as auxiliaries and has no normals: ``aux_classes`` (one logits head per entry, returned right
after the main logits) and ``normals=False`` give ``(seg_logits, *aux_logits, depth)``.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.core.registry import MODELS
from pipeline.models.base import MultiTaskNet

CONVS_PER_STAGE = 2


def conv_block(fan_in: int, fan_out: int) -> nn.Sequential:
    """conv3x3 (no bias: BN supplies it) - BN - ReLU."""
    return nn.Sequential(nn.Conv2d(fan_in, fan_out, 3, padding=1, bias=False), nn.BatchNorm2d(fan_out),
                         nn.ReLU(inplace=True))


def stage_widths(width: int, stages: int) -> list[int]:
    """Channels of each encoder stage: width, 2w, 4w, 8w, 8w, ... (SegNet's 64..512 for w = 64)."""
    return [width * 2 ** min(s, 3) for s in range(stages)]


def task_head(width: int, out_channels: int) -> nn.Sequential:
    """Liu et al.'s prediction head: conv3x3 - ReLU - conv1x1."""
    return nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(width, out_channels, 1))


@MODELS.register("segnet")
class SegNetMultiTask(MultiTaskNet):
    """Shared SegNet trunk (z = last decoder feature map) and one head per task."""

    def __init__(self, num_classes: int = 13, width: int = 64, stages: int = 5, aux_classes: Sequence[int] = (),
                 normals: bool = True) -> None:
        super().__init__()
        if width < 1 or stages < 1 or num_classes < 2 or any(c < 2 for c in aux_classes):
            raise ValueError(f"segnet: need width >= 1, stages >= 1, num_classes >= 2 "
                             f"and aux_classes >= 2 (got {width}, {stages}, {num_classes}, {list(aux_classes)})")
        widths = stage_widths(width, stages)
        self.encoder = nn.ModuleList()
        fan_in = 3
        for w in widths:
            self.encoder.append(nn.Sequential(conv_block(fan_in, w), *[conv_block(w, w)
                                                                        for _ in range(CONVS_PER_STAGE - 1)]))
            fan_in = w
        # Decoder stage s mirrors encoder stage s: unpool to its resolution, then convs from its width
        # down to the width of the stage above (width itself for the top stage).
        self.decoder = nn.ModuleList()
        for s in reversed(range(stages)):
            out = widths[s - 1] if s > 0 else width
            blocks = [conv_block(widths[s], widths[s]) for _ in range(CONVS_PER_STAGE - 1)]
            self.decoder.append(nn.Sequential(*blocks, conv_block(widths[s], out)))
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.seg_head = task_head(width, num_classes)
        self.aux_seg_heads = nn.ModuleList(task_head(width, c) for c in aux_classes)  # empty: NYUv2's keys
        self.depth_head = task_head(width, 1)
        self.normal_head = task_head(width, 3) if normals else None
        self.num_classes = num_classes
        self.stages = stages

    def encode(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < 2 ** self.stages:
            raise ValueError(f"segnet with {self.stages} stages needs images of at least {2 ** self.stages} "
                             f"pixels a side, got {tuple(x.shape[-2:])}")
        trail = []
        for block in self.encoder:
            x = block(x)
            size = x.shape[-2:]
            x, idx = self.pool(x)
            trail.append((idx, size))
        for block, (idx, size) in zip(self.decoder, reversed(trail)):
            x = block(self.unpool(x, idx, output_size=size))  # output_size: odd sizes unpool exactly
        return x

    def decode(self, z: Tensor) -> tuple[Tensor, ...]:
        outputs = [self.seg_head(z), *(head(z) for head in self.aux_seg_heads), self.depth_head(z)]
        if self.normal_head is not None:
            outputs.append(F.normalize(self.normal_head(z), dim=1))
        return tuple(outputs)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters()) + list(self.decoder.parameters())

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last decoder conv-BN block, which outputs z."""
        return list(self.decoder[-1][-1].parameters())
