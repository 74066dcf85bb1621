"""DTG-AuxL's joint generator φ and its generated task (task generator role), and the learned task weights
(loss combiner role). See ``method.py`` for the composition and ``config.py`` for every switch.

Per row (a sample, or a point of a dense primary label):

- **feature generator** (``generate_data``): ĥ_g = G_f(h_i, h_π(i)), a new feature of the task model's
  feature size d from the sample's feature h_i = z_i and its paired sample's, π a seeded shuffle of the batch
  (shared-input, [A §4.3]). Not detached: ĥ_g depends on θ and on φ, so ∇φ∇θ L_t ≠ 0 ([R] notes §3).
- **label generator**: s = G_l(y_p, y_a1.., [y_p, y_a1.. of π(i)]) ∈ R^{C_p}; the generated label
  ŷ = softmax(s + β·b) with b = one-hot(y_p) ([A §5.4], [R] ``label_form``, ``label_bias``).
- each generator = Σ_n A_n x_n (linear term) + MLP([e_1; …; e_N]) (nonlinear term) over per-field embeddings
  e_n ∈ R^m (``nn.Embedding`` for class labels, ``nn.Linear`` otherwise) ([A §5.5] Wide&Deep; [R] the form).
- the generated task's head (part of θ, trained by W's optimiser): ℓ_g = soft cross-entropy(head(ĥ_g), ŷ).
- a regression primary (a real label, e.g. a rating; notes §3 [R]): s ∈ R, ŷ = b + s with b = y_p (or the pair's
  mean, ``label_bias: pair``), ℓ_g = (head(ĥ_g) − ŷ)², the ``target`` regulariser the mean s² (ŷ's distance from
  its bias, as KL(b ‖ ŷ) for classes); ``label_form``, β and the ``diversity`` regulariser are for classes only.

Dense primary labels (per point / pixel, [A §5.6]): the generators run on every point's row: the features
at that point of both samples, the labels at that point.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.datasets.shared.base import LabelField
from pipeline.methods.base import Batch, LossCombiner, StepContext, TaskGenerator
from pipeline.methods.dtg.config import DTGConfig

SOFTPLUS_ONE = math.log(math.e - 1)  # softplus⁻¹(1): learned task weights start at 1


# ------------------------------------------------------------------------------------------- the generators


@dataclass(frozen=True)
class FieldSpec:
    """An input field of a generator: ``classes`` > 0 for class ids (index ``classes`` = unknown), else a
    real vector of ``size``."""

    classes: int = 0
    size: int = 1


EMBED_STD = 0.01  # class embeddings start small, as in Wide&Deep/AutoInt: Adam's sign-like first steps on a wide
# concatenation of N(0, 1) embeddings moved the scores by tens and collapsed every generated label at once


def _field_map(spec: FieldSpec, out: int) -> nn.Module:
    if not spec.classes:
        return nn.Linear(spec.size, out)
    embedding = nn.Embedding(spec.classes + 1, out)
    nn.init.normal_(embedding.weight, std=EMBED_STD)
    return embedding


def _apply(module: nn.Module, spec: FieldSpec, x: Tensor) -> Tensor:
    return module(x) if spec.classes else module(x.view(len(x), -1).to(module.weight.dtype))


class SelfAttentionBlock(nn.Module):
    """A pre-norm transformer block over the field tokens, written out (explicit softmax attention) so that the
    hypergradient's double backward never meets a fused attention kernel."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"methods.dtg.transformer_heads = {heads} must divide embed_dim = {dim}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:  # [R, N, m]
        r, n, m = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(r, n, 3, self.heads, m // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(m // self.heads), dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(r, n, m))
        return x + self.mlp(self.norm2(x))


class NonlinearTerm(nn.Module):
    """MLP([e_1; …; e_N]) or self-attention over the tokens e_n then a linear read-out; own embeddings."""

    def __init__(self, fields: list[FieldSpec], out: int, cfg: DTGConfig) -> None:
        super().__init__()
        m = cfg.embed_dim
        self.fields = fields
        self.embed = nn.ModuleList(_field_map(f, m) for f in fields)
        self.kind = cfg.nonlinear
        if self.kind == "mlp":
            width = cfg.mlp_width or 2 * m
            layers: list[nn.Module] = []
            fan_in = len(fields) * m
            for _ in range(cfg.mlp_layers - 1):
                layers += [nn.Linear(fan_in, width), nn.ReLU()]
                fan_in = width
            layers.append(nn.Linear(fan_in, out))
            self.net = nn.Sequential(*layers)
        else:
            self.position = nn.Parameter(torch.zeros(len(fields), m))
            self.blocks = nn.Sequential(*(SelfAttentionBlock(m, cfg.transformer_heads)
                                          for _ in range(max(1, cfg.mlp_layers - 1))))
            self.net = nn.Linear(len(fields) * m, out)

    def forward(self, xs: list[Tensor]) -> Tensor:
        e = [_apply(mod, f, x) for mod, f, x in zip(self.embed, self.fields, xs)]
        if self.kind == "mlp":
            return self.net(torch.cat(e, dim=1))
        tokens = self.blocks(torch.stack(e, dim=1) + self.position)
        return self.net(tokens.flatten(1))


class LinearTerm(nn.Module):
    """Σ_n A_n x_n (+ a bias): a lookup of A_n's column for class fields (A_n·one-hot), a linear map otherwise."""

    def __init__(self, fields: list[FieldSpec], out: int) -> None:
        super().__init__()
        self.fields = fields
        self.maps = nn.ModuleList(_field_map(f, out) for f in fields)
        self.bias = nn.Parameter(torch.zeros(out))
        for mod, f in zip(self.maps, fields):
            if not f.classes and mod.bias is not None:
                nn.init.zeros_(mod.bias)

    def forward(self, xs: list[Tensor]) -> Tensor:
        return self.bias + sum(_apply(mod, f, x) for mod, f, x in zip(self.maps, self.fields, xs))


class FieldNet(nn.Module):
    """One generator: the terms ``cfg.terms`` names, summed ([A Table A6])."""

    def __init__(self, fields: list[FieldSpec], out: int, cfg: DTGConfig) -> None:
        super().__init__()
        self.fields = fields
        terms: list[nn.Module] = []
        if cfg.terms == "linear_mlp":
            terms.append(LinearTerm(fields, out))
        terms.append(NonlinearTerm(fields, out, cfg))
        if cfg.terms == "mlp_mlp":
            terms.append(NonlinearTerm(fields, out, cfg))
        self.terms = nn.ModuleList(terms)

    def forward(self, xs: list[Tensor]) -> Tensor:
        if len(xs) != len(self.fields):
            raise ValueError(f"expected {len(self.fields)} input fields, got {len(xs)}")
        return sum(term(xs) for term in self.terms)


# ---------------------------------------------------------------------------------------------- helpers


def main_output(outputs: Any) -> Tensor:
    """The main task's output among a network's outputs (the first tensor, however nested)."""
    while isinstance(outputs, (tuple, list)):
        outputs = outputs[0]
    return outputs


def to_rows(t: Tensor) -> Tensor:
    """Features [B, d, *S] -> [B·S, d]: one row per sample or point (the identity on [B, d])."""
    return t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1]) if t.dim() > 2 else t


def label_rows(t: Tensor, size: int = 1) -> Tensor:
    """Labels [B, *S] -> [B·S] (or, ``size`` > 1 channels, [B, size, *S] -> [B·S, size]), in ``to_rows``' order."""
    return to_rows(t) if size > 1 else t.reshape(-1)


def entropy(p: Tensor) -> Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def shuffle_pairing(batch_size: int, generator: torch.Generator) -> Tensor:
    """π: the auxiliary sample of sample i is π(i), a seeded shuffle of its batch ([A §4.3])."""
    return torch.randperm(batch_size, generator=generator)


def companion_pairing(batch_size: int, companion: int) -> Tensor:
    """Different input ([A §4.4-4.5], a dataset pair's batch: the primary rows, then ``companion`` rows of the
    auxiliary dataset's batch): π(i) = the i-th auxiliary row, for each primary row i (cycling if fewer). The
    auxiliary batch is already a seeded draw, so no shuffle is needed."""
    primary = batch_size - companion
    if primary < 1 or companion < 1:
        raise ValueError(f"a dataset pair's batch needs primary and auxiliary rows, got {primary} and {companion}")
    return primary + torch.arange(primary) % companion


@dataclass
class Generated:
    """One batch's generated task, rows = samples (or points)."""

    feature: Tensor  # ĥ_g [R, d]
    label: Tensor  # ŷ_g [R, C]
    scores: Tensor  # s [R, C]: the learnable part
    bias: Tensor  # b [R, C] (zero rows where the primary label is unknown)
    loss: Tensor  # ℓ_g [B] or [B, *S]


# ------------------------------------------------------------------------------------------------ roles


class DTGWeights(LossCombiner):
    """L_t = L_p + Σ_k w_k L_ak + w_g L_g, w = softplus(ω) with ω ∈ φ initialised at w = 1 ([R] notes §4), or all
    weights 1 (``learn``: false)."""

    def __init__(self, num_tasks: int, learn: bool) -> None:
        super().__init__(num_tasks)
        self.learn = learn
        if learn:
            self.omega = nn.Parameter(torch.full((num_tasks - 1,), SOFTPLUS_ONE))
        else:
            self.register_buffer("omega", torch.full((num_tasks - 1,), SOFTPLUS_ONE))

    def hyper_parameters(self) -> list[nn.Parameter]:
        return [self.omega] if self.learn else []

    def weights(self) -> Tensor:
        return F.softplus(self.omega)

    def training_loss(self, losses: Tensor) -> Tensor:
        mean = losses.mean(0)
        return mean[0] + (self.weights() * mean[1:]).sum()


class DTGGenerator(TaskGenerator):
    """The joint generator φ (feature and label generators) and the generated task's head; the loss columns are
    the main task, the used given auxiliaries (``methods.dtg.auxiliaries``), then the generated task."""

    generated_tasks = ("generated",)

    def __init__(self, cfg: DTGConfig, dataset: Any, data: Any, params: Any) -> None:
        super().__init__()
        self.cfg = cfg
        fields: list[LabelField] = dataset.task_label_fields(data)
        self.regression = fields[0].classes == 0  # a real primary label: ŷ = y_p + s
        if fields[0].classes == 1:
            raise ValueError(f"method dtg_auxl: the main task of dataset {dataset.name} has one class")
        if self.regression and (cfg.label_form != "softmax_bias" or cfg.reg_kind != "target"):
            raise ValueError(f"methods.dtg: dataset {dataset.name}'s main task is a regression (ŷ = y_p + s): "
                             "label_form and reg_kind: diversity apply to a classification main task only")
        given = list(data.task_names[1:])
        chosen = cfg.auxiliaries if cfg.auxiliaries is not None else given
        unknown = [a for a in chosen if a not in given]
        if unknown:
            raise ValueError(f"methods.dtg.auxiliaries: {unknown} are not auxiliaries of dataset {dataset.name}; "
                             f"it has {given}")
        self.aux_columns = [given.index(a) + 1 for a in chosen]  # columns of the losses and the label fields
        self.aux_names = list(chosen)
        self.aux_classes = [fields[j].classes for j in self.aux_columns]
        self.num_classes = 1 if self.regression else fields[0].classes  # outputs of s and of the generated head
        self.feature_size, self.dense = self._probe(dataset, data, params)
        d, c = self.feature_size, self.num_classes

        own = [FieldSpec(size=1) if self.regression else FieldSpec(classes=c)]
        if cfg.use_aux_labels:
            own += [FieldSpec(classes=fields[j].classes, size=fields[j].size) for j in self.aux_columns]
        self.pair_labels = cfg.generate_data and cfg.pair_labels
        self.label_generator = FieldNet(own * (2 if self.pair_labels else 1), c, cfg)
        self.feature_generator = FieldNet([FieldSpec(size=d)] * 2, d, cfg) if cfg.generate_data else None
        self.head = nn.Linear(d, c)  # the generated task's head: θ, not φ
        if self.regression:  # its bias is set once, at the first lower batch (``batch_losses``); saved with φ
            self.register_buffer("head_calibrated", torch.tensor(False))
        # π's stream: seeded from the method's seed (the trainer builds methods under their own seeded stream)
        self.pairing_seed = int(torch.randint(0, 2**62, ()))
        self.pair_stream = torch.Generator().manual_seed(self.pairing_seed)
        self.last_pairing: tuple[Tensor, Tensor] | None = None  # (batch rows, π) of the latest lower step
        self._diagnostics: dict[str, float] = {}

    @staticmethod
    def _probe(dataset: Any, data: Any, params: Any) -> tuple[int, bool]:
        """The task model's feature size d, and whether the main task is dense: from one forward pass of a
        throw-away network on two samples."""
        model = dataset.build_model(data, params.profile.model if params is not None else None).eval()
        x, y = dataset.batch_transform(data.inputs[:2], data.targets[:2], train=False)
        with torch.no_grad():
            z = model.encode(x)
            out = main_output(model.decode(z))
        dense = out.dim() > 2
        if dense and tuple(z.shape[2:]) != tuple(out.shape[2:]):
            raise ValueError(f"method dtg_auxl: dataset {dataset.name}'s features {tuple(z.shape)} are not per "
                             f"element of its dense main output {tuple(out.shape)}")
        if z.dim() != out.dim():
            raise ValueError(f"method dtg_auxl: dataset {dataset.name}'s features {tuple(z.shape)} and main output "
                             f"{tuple(out.shape)} are not both per sample or both per point")
        return int(z.shape[1]), dense

    # -- roles -----------------------------------------------------------------------------------------

    def hyper_parameters(self) -> list[nn.Parameter]:
        gens = [self.label_generator] + ([self.feature_generator] if self.feature_generator is not None else [])
        return [p for g in gens for p in g.parameters()]

    def joint_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def loss_names(self, task_names) -> list[str]:
        return [task_names[0], *self.aux_names, *self.generated_tasks]

    # -- the generated task --------------------------------------------------------------------------

    def new_pairing(self, batch: Batch) -> Tensor:
        """π for a lower step's batch: a shuffle (shared input), or each primary row's auxiliary-dataset row (a
        dataset pair's batch, ``batch.companion`` > 0: only the primary rows generate)."""
        if batch.companion:
            perm = companion_pairing(len(batch.x), batch.companion).to(batch.x.device)
        else:
            perm = shuffle_pairing(len(batch.x), self.pair_stream).to(batch.x.device)
        self.last_pairing = (batch.index.detach().clone(), perm)
        return perm

    def pairing_for(self, batch: Batch) -> Tensor:
        """The π the latest lower step used on ``batch`` (the Hessian's L_t is that step's objective)."""
        if self.last_pairing is None or not torch.equal(self.last_pairing[0], batch.index):
            raise ValueError("dtg_auxl: no pairing recorded for this batch (the lower step's batch is expected)")
        return self.last_pairing[1]

    def label_inputs(self, dataset: Any, batch: Batch) -> tuple[list[Tensor], Tensor]:
        """The label fields of every sample (or point) and the primary label with unknowns (hidden main labels,
        out-of-range ids) set to the unknown index C."""
        labels = dataset.task_labels(batch.y)
        c = self.num_classes
        primary = labels[0] if self.regression else labels[0].long()
        known = batch.labelled.view(-1, *([1] * (primary.dim() - 1)))
        if self.regression:  # an unknown real label reads as 0 (and gives no bias)
            primary = torch.where(known & torch.isfinite(primary), primary, torch.zeros_like(primary))
        else:
            known = known & (primary >= 0) & (primary < c)
            primary = torch.where(known, primary, torch.full_like(primary, c))
        inputs = [primary]
        if self.cfg.use_aux_labels:
            for j, k in zip(self.aux_columns, self.aux_classes):
                lab = labels[j]
                if k:  # class ids: unknown (negative, out of range) -> index k
                    lab = lab.long()
                    lab = torch.where((lab >= 0) & (lab < k), lab, torch.full_like(lab, k))
                inputs.append(lab)
        return inputs, primary

    def generate(self, z: Tensor, dataset: Any, batch: Batch, perm: Tensor, track_hparams: bool = True
                 ) -> Generated:
        """The generated task of the first len(π) rows (every row with shared input; a dataset pair's primary
        rows), row i paired with row π(i)."""
        c, cfg = self.num_classes, self.cfg
        inputs, primary_all = self.label_inputs(dataset, batch)
        n = len(perm)
        primary = primary_all[:n]
        partners = [x[perm] for x in inputs]
        inputs = [x[:n] for x in inputs]
        if self.pair_labels:
            inputs = inputs + partners
        rows = [label_rows(x, spec.size) for x, spec in zip(inputs, self.label_generator.fields)]
        with torch.set_grad_enabled(track_hparams and torch.is_grad_enabled()):
            scores = self.label_generator(rows)
        if self.regression:  # ŷ = b + s, b = y_p (or the pair's mean)
            bias = label_rows(primary)[:, None].to(scores.dtype)
            if cfg.label_bias == "pair" and cfg.generate_data:
                bias = (bias + label_rows(primary_all[perm])[:, None].to(scores.dtype)) / 2
            label = bias + scores
        else:
            own = F.one_hot(label_rows(primary), c + 1)[:, :c].to(scores.dtype)  # unknown -> a zero row
            if cfg.label_bias == "pair" and cfg.generate_data:
                other = F.one_hot(label_rows(primary_all[perm]), c + 1)[:, :c].to(scores.dtype)
                bias = (own + other) / (own.sum(1, keepdim=True) + other.sum(1, keepdim=True)).clamp_min(1)
            else:
                bias = own
            if cfg.label_form == "softmax_bias":
                label = torch.softmax(scores + cfg.beta * bias, dim=1)
            else:
                label = (bias + torch.softmax(scores, dim=1)) / (1 + bias.sum(1, keepdim=True))
        h = to_rows(z[:n])
        feature = self.feature_generator([h, to_rows(z[perm])]) if self.feature_generator is not None else h
        out = self.head(feature)
        loss = ((out - label) ** 2).sum(1) if self.regression else -(label * F.log_softmax(out, dim=1)).sum(1)
        loss = loss.view(n, *z.shape[2:])
        if n < len(z):  # a dataset pair: 0 on the auxiliary rows, the batch mean = the mean over the primary rows
            loss = torch.cat([loss * (len(z) / n), loss.new_zeros(len(z) - n, *loss.shape[1:])])
        return Generated(feature, label, scores, bias, loss)

    def losses(self, model: Any, dataset: Any, batch: Batch, perm: Tensor, track_hparams: bool = True
               ) -> tuple[Tensor, Tensor, Generated]:
        """Unscaled losses [B, 1 + K + 1 (, *pixels)] (main, used auxiliaries, generated), z, the generated task."""
        z = model.encode(batch.x)
        given = dataset.per_task_losses(model.decode(z), batch.y)
        gen = self.generate(z, dataset, batch, perm, track_hparams)
        g = gen.loss
        if given.dim() > 2:  # loss images: the generated per-point loss on the same grid (every point valid)
            g = g.reshape(g.shape[0], *given.shape[2:])
        elif g.dim() > 1:
            g = g.flatten(1).mean(1)
        cols = given[:, [0, *self.aux_columns]]
        return torch.cat([cols, g.unsqueeze(1)], dim=1), z, gen

    def batch_losses(self, model: Any, dataset: Any, batch: Batch, track_hparams: bool = False
                     ) -> tuple[Tensor, Tensor]:
        """W's step: a new pairing π for the batch; the diagnostics of its generated labels are kept.

        A regression primary: at the first batch the generated head's bias is set to the batch's mean primary
        label, as a primary head starts at the mean rating; from 0 it would need ~mean/lr Adam steps to get
        there, while its squared error (~mean²) swamps the trunk's gradient."""
        if self.regression and not bool(self.head_calibrated):
            with torch.no_grad():
                self.head.bias.fill_(float(self.label_inputs(dataset, batch)[1].float().mean()))
                self.head_calibrated.fill_(True)
        losses, z, gen = self.losses(model, dataset, batch, self.new_pairing(batch), track_hparams)
        self._diagnostics = collapse_diagnostics(gen, self.regression)
        return losses, z

    def regulariser(self, gen: Generated) -> Tensor:
        """The instance regularisation R(φ) on a generated batch (without λ), as ``reg_kind`` says ([R] §5)."""
        if self.regression:  # ŷ's squared distance from its bias
            return (gen.scores ** 2).mean()
        if self.cfg.reg_kind == "target":
            mass = gen.bias.sum(1)
            keep = mass > 0
            if not keep.any():
                return gen.label.sum() * 0
            target = gen.bias[keep] / mass[keep, None]
            kl = (target * (torch.log(target.clamp_min(1e-12)) - torch.log(gen.label[keep].clamp_min(1e-12)))).sum(1)
            return kl.mean()
        mean = torch.softmax(gen.scores, dim=1).mean(0)
        return (mean * torch.log(mean.clamp_min(1e-12))).sum()

    def step_log(self, ctx: StepContext) -> dict[str, float]:
        return dict(self._diagnostics) if ctx.step % self.cfg.diagnose_every == 0 else {}


def collapse_diagnostics(gen: Generated, regression: bool = False) -> dict[str, float]:
    """Mode collapse ([A §5.4]), per batch: distinct argmax classes and the entropy (nats) of the mean of the
    generated labels ŷ (``dtg_label_*``) and of the learnable part softmax(s) alone (``dtg_score_*``); one class
    for every input is collapse. A regression primary: the mean and the spread (std over the batch) of the
    learnable shift s; a spread of 0 is the same collapse (one shift for every input)."""
    if regression:
        s = gen.scores.detach()[:, 0]
        return {"dtg_score_mean": float(s.mean()), "dtg_score_std": float(s.std()) if len(s) > 1 else 0.0}
    with torch.no_grad():
        label, scores = gen.label.detach(), torch.softmax(gen.scores.detach(), dim=1)
        return {"dtg_label_classes": float(label.argmax(1).unique().numel()),
                "dtg_label_entropy": float(entropy(label.mean(0))),
                "dtg_score_classes": float(scores.argmax(1).unique().numel()),
                "dtg_score_entropy": float(entropy(scores.mean(0)))}
