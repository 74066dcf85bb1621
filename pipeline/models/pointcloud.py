"""Point-cloud networks for part segmentation (AuxiLearn App. C.9): DGCNN as the primary network and a
light PointNet as the auxiliary label generator.

``dgcnn_partseg`` follows DGCNN's part-segmentation network (Wang et al., 2019) without the spatial
transform and — as in the paper — without the object-category label as input: three EdgeConv blocks on a
dynamic k-NN graph (k nearest neighbours recomputed in each block's input space), a global feature
max-pooled from their concatenation, and a per-point MLP on [local features, global feature]. Widths are
parameters (``width`` 64 and ``emb`` 1024 are the original sizes) so a CPU can train it on the stand-in.

Shapes: inputs x [B, 3, N] (channels first); z [B, F, N] per-point shared features; outputs part logits
[B, num_parts, N], plus aux logits [B, aux_outputs, N] from a second 1x1-conv head when ``aux_outputs > 0``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from pipeline.core.registry import MODELS
from pipeline.models.base import MultiTaskNet

LEAK = 0.2  # LeakyReLU slope of the original DGCNN


def knn(x: Tensor, k: int) -> Tensor:
    """Indices [B, N, k] of the k nearest points (squared Euclidean, the point itself included) in x [B, C, N]."""
    inner = torch.bmm(x.transpose(1, 2), x)  # [B, N, N]
    sq = (x * x).sum(1)  # [B, N]
    neg_dist = 2 * inner - sq[:, :, None] - sq[:, None, :]
    return neg_dist.topk(k=min(k, x.shape[2]), dim=-1).indices


def edge_features(x: Tensor, k: int) -> Tensor:
    """EdgeConv input [B, 2C, N, k]: (x_j - x_i, x_i) over each point i's k nearest neighbours j."""
    b, c, n = x.shape
    idx = knn(x, k)  # [B, N, k]
    kk = idx.shape[-1]
    points = x.transpose(1, 2)  # [B, N, C]
    flat = (idx + torch.arange(b, device=x.device).view(b, 1, 1) * n).reshape(-1)
    neighbours = points.reshape(b * n, c)[flat].view(b, n, kk, c)
    centre = points[:, :, None, :].expand(b, n, kk, c)
    return torch.cat([neighbours - centre, centre], dim=3).permute(0, 3, 1, 2).contiguous()


def _conv2d(fan_in: int, fan_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(fan_in, fan_out, 1, bias=False), nn.BatchNorm2d(fan_out), nn.LeakyReLU(LEAK))


def _conv1d(fan_in: int, fan_out: int, leak: float = LEAK) -> nn.Sequential:
    act: nn.Module = nn.LeakyReLU(leak) if leak else nn.ReLU()
    return nn.Sequential(nn.Conv1d(fan_in, fan_out, 1, bias=False), nn.BatchNorm1d(fan_out), act)


class EdgeConv(nn.Module):
    """A dynamic-graph EdgeConv block: k-NN in the input's space, shared MLP on edge features, max over neighbours."""

    def __init__(self, fan_in: int, widths: Sequence[int], k: int) -> None:
        super().__init__()
        self.k = k
        layers, prev = [], 2 * fan_in
        for w in widths:
            layers.append(_conv2d(prev, w))
            prev = w
        self.mlp = nn.Sequential(*layers)
        self.out_channels = prev

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(edge_features(x, self.k)).max(dim=-1).values


@MODELS.register("dgcnn_partseg")
class DGCNNPartSeg(MultiTaskNet):
    """DGCNN part segmentation without the category input; z is the per-point MLP's penultimate features."""

    def __init__(self, num_parts: int, k: int = 20, width: int = 64, emb: int = 1024, dropout: float = 0.5,
                 aux_outputs: int = 0) -> None:
        super().__init__()
        if k < 1 or width < 1 or emb < 1:
            raise ValueError("k, width and emb must be positive")
        w = width
        # The original's blocks: (64, 64), (64, 64), (64,) on the first EdgeConv's 3-d coordinates.
        self.edge1 = EdgeConv(3, (w, w), k)
        self.edge2 = EdgeConv(w, (w, w), k)
        self.edge3 = EdgeConv(w, (w,), k)
        local = 3 * w
        self.global_mlp = _conv1d(local, emb)
        # Per-point MLP on [x1, x2, x3, global]: 256, 256, 128 in the original (4w, 4w, 2w here).
        self.point_mlp = nn.Sequential(
            _conv1d(local + emb, 4 * w), nn.Dropout(dropout),
            _conv1d(4 * w, 4 * w), nn.Dropout(dropout),
        )
        self.last_shared = _conv1d(4 * w, 2 * w)
        self.features = 2 * w
        self.part_head = nn.Conv1d(self.features, num_parts, 1)
        self.aux_head = nn.Conv1d(self.features, aux_outputs, 1) if aux_outputs else None
        self.has_generated_head = bool(aux_outputs)

    def encode(self, x: Tensor) -> Tensor:
        n = x.shape[2]
        x1 = self.edge1(x)
        x2 = self.edge2(x1)
        x3 = self.edge3(x2)
        local = torch.cat([x1, x2, x3], dim=1)
        glob = self.global_mlp(local).max(dim=2, keepdim=True).values.expand(-1, -1, n)
        return self.last_shared(self.point_mlp(torch.cat([local, glob], dim=1)))

    def decode(self, z: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        logits = self.part_head(z)
        if self.aux_head is None:
            return logits
        return logits, self.aux_head(z)

    def _heads(self) -> set[int]:
        heads = [self.part_head] + ([self.aux_head] if self.aux_head is not None else [])
        return {id(p) for h in heads for p in h.parameters()}

    def shared_parameters(self) -> list[nn.Parameter]:
        heads = self._heads()
        return [p for p in self.parameters() if id(p) not in heads]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return list(self.last_shared.parameters())


@MODELS.register("pointnet_seg_light")
class PointNetSegLight(nn.Module):
    """A light PointNet segmenter (no input/feature transforms): per-point MLP, max-pooled global feature
    concatenated back to every point, per-point MLP to ``num_classes`` logits [B, num_classes, N]."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError("num_classes and width must be positive")
        w = width
        self.local = nn.Sequential(_conv1d(3, w, leak=0), _conv1d(w, 2 * w, leak=0))
        self.global_mlp = _conv1d(2 * w, 8 * w, leak=0)
        self.head = nn.Sequential(_conv1d(2 * w + 8 * w, 4 * w, leak=0), _conv1d(4 * w, 2 * w, leak=0),
                                  nn.Conv1d(2 * w, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        local = self.local(x)
        glob = self.global_mlp(local).max(dim=2, keepdim=True).values.expand(-1, -1, x.shape[2])
        return self.head(torch.cat([local, glob], dim=1))


@MODELS.register("dgcnn_multitask")
class DGCNNMultiTask(DGCNNPartSeg):
    """``dgcnn_partseg`` with one more 1x1-conv head per given per-point auxiliary task (``task_classes[j]``
    logits each): ``decode`` returns (part logits, *task logits), each [B, C, N], and with ``aux_outputs > 0``
    ((that tuple), generated-task logits)."""

    def __init__(self, num_parts: int, task_classes: Sequence[int], k: int = 20, width: int = 64, emb: int = 1024,
                 dropout: float = 0.5, aux_outputs: int = 0) -> None:
        super().__init__(num_parts, k=k, width=width, emb=emb, dropout=dropout, aux_outputs=aux_outputs)
        self.task_heads = nn.ModuleList(nn.Conv1d(self.features, c, 1) for c in task_classes)

    def decode(self, z: Tensor) -> tuple[Tensor, ...] | tuple[tuple[Tensor, ...], Tensor]:
        outputs = (self.part_head(z), *(head(z) for head in self.task_heads))
        return outputs if self.aux_head is None else (outputs, self.aux_head(z))

    def _heads(self) -> set[int]:
        return super()._heads() | {id(p) for p in self.task_heads.parameters()}
