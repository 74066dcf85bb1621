"""AutoInt (Song et al., CIKM 2019): feature interactions by multi-head self-attention over the fields' embeddings.

Each categorical field f has an embedding e_f ∈ R^m (id 0 = out of vocabulary: a zero row, never trained). An
interacting layer maps every field's vector through, per head h, W_Q^h, W_K^h, W_V^h ∈ R^{d'×m}:
    α^h_{f,k} = softmax_k ⟨W_Q^h e_f, W_K^h e_k⟩     (the paper's inner product, eq. 5: no 1/√d' scaling)
    ẽ^h_f = Σ_k α^h_{f,k} W_V^h e_k,    e'_f = ReLU([ẽ^1_f; …; ẽ^H_f] + W_res e_f)
and layers stack. z = the concatenation of every field's last vector [B, F·H·d'], shared by the task heads
(one Linear, or Linear-ReLU-Linear, per task), as the paper's output layer reads it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from pipeline.core.registry import MODELS
from pipeline.models.base import MultiTaskNet

EMBED_STD = 0.05  # small random embeddings, the OOV row zero


class InteractingLayer(nn.Module):
    """One multi-head self-attentive interacting layer with a residual connection: [B, F, in] -> [B, F, H·d']."""

    def __init__(self, in_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        out = heads * head_dim
        self.query, self.key, self.value = (nn.Linear(in_dim, out, bias=False) for _ in range(3))
        self.residual = nn.Linear(in_dim, out, bias=False)

    def attention(self, e: Tensor) -> Tensor:
        """The attention weights α [B, H, F, F] (rows: the attending field)."""
        b, f, _ = e.shape
        q = self.query(e).view(b, f, self.heads, self.head_dim).transpose(1, 2)
        k = self.key(e).view(b, f, self.heads, self.head_dim).transpose(1, 2)
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1)

    def forward(self, e: Tensor) -> Tensor:
        b, f, _ = e.shape
        v = self.value(e).view(b, f, self.heads, self.head_dim).transpose(1, 2)
        mixed = (self.attention(e) @ v).transpose(1, 2).reshape(b, f, self.heads * self.head_dim)
        return torch.relu(mixed + self.residual(e))


def _head(in_dim: int, out: int, layers: int, bias: float) -> nn.Module:
    last = nn.Linear(in_dim if layers == 1 else in_dim // 2 or 1, out)
    nn.init.constant_(last.bias, bias)
    return last if layers == 1 else nn.Sequential(nn.Linear(in_dim, in_dim // 2 or 1), nn.ReLU(), last)


@MODELS.register("autoint")
class AutoInt(MultiTaskNet):
    """AutoInt over categorical fields (long inputs [B, F]), one head per task; ``decode`` returns a tuple of
    [B, outputs] tensors in task order."""

    def __init__(self, field_sizes: Sequence[int], task_outputs: Sequence[int], embed_dim: int = 16,
                 layers: int = 2, heads: int = 2, head_dim: int = 8, head_layers: int = 1,
                 output_bias: Sequence[float] | None = None) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(size, embed_dim, padding_idx=0) for size in field_sizes)
        for emb in self.embeddings:
            nn.init.normal_(emb.weight, std=EMBED_STD)
            with torch.no_grad():
                emb.weight[0].zero_()
        dims = [embed_dim] + [heads * head_dim] * layers
        self.layers = nn.ModuleList(InteractingLayer(dims[i], heads, head_dim) for i in range(layers))
        z_dim = len(field_sizes) * dims[-1]
        bias = list(output_bias) if output_bias is not None else [0.0] * len(task_outputs)
        self.heads = nn.ModuleList(_head(z_dim, k, head_layers, b) for k, b in zip(task_outputs, bias))

    def embed(self, x: Tensor) -> Tensor:
        """[B, F] ids -> [B, F, m]."""
        return torch.stack([emb(x[:, f]) for f, emb in enumerate(self.embeddings)], dim=1)

    def encode(self, x: Tensor) -> Tensor:
        e = self.embed(x.long())
        for layer in self.layers:
            e = layer(e)
        return e.flatten(1)

    def decode(self, z: Tensor) -> tuple[Tensor, ...]:
        return tuple(head(z) for head in self.heads)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.embeddings.parameters(), *self.layers.parameters()]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return list(self.layers[-1].parameters())
