"""AuxiLearn (Navon et al., ICLR 2021): φ learned on the auxiliary set by the IFT outer update
(``outer/implicit.py``), for combining given auxiliaries with the auxiliary network g(ℓ; φ)
(``combiners/auxnet.py``, §3.2) or for learning a new auxiliary task with the label generator (§3.3)."""
from __future__ import annotations

from typing import Any

from pipeline.methods.base import MethodSpec, Roles, register
from pipeline.methods.combiners.auxnet import AuxiLearnConfig, AuxNetCombiner
from pipeline.methods.combiners.fixed import FixedWeights
from pipeline.methods.generators.labels import GeneratedLabels, LabelsConfig
from pipeline.methods.outer.implicit import ImplicitOuterUpdate


def combining_method(name: str, kind: str, order: int, description: str, hyper_set: str = "aux",
                     requires: frozenset[str] = frozenset({"auxiliaries"})) -> MethodSpec:
    """L_T = ℓ_main + g(ℓ; φ) with the auxiliary network ``kind``, φ by the IFT outer update on ``hyper_set``."""

    def build(num_tasks: int, cfg: AuxiLearnConfig, bilevel: Any, dataset: Any, data: Any, params: Any) -> Roles:
        combiner = AuxNetCombiner.from_config(num_tasks, kind, cfg)
        outer = ImplicitOuterUpdate(combiner.hyper_parameter_groups(), bilevel, after_update=combiner.project,
                                    hyper_set=hyper_set)
        return Roles(combiner, outer, None)

    return MethodSpec(name, build, group="auxilearn", order=order, Config=AuxiLearnConfig,
                      config_section="auxilearn", uses_bilevel=True, uses_aux_set=hyper_set == "aux",
                      requires=requires, description=description, splits_hyper_batch=True)


for _order, _kind in enumerate(("linear", "deep_linear", "nonlinear")):
    register(combining_method(f"auxilearn_{_kind}", _kind, _order, f"AuxiLearn, {_kind} auxiliary network"))
# §5.3: a CNN over loss images, for datasets with dense (per-pixel) tasks.
register(combining_method("auxilearn_convnet", "convnet", 3, "AuxiLearn, ConvNet over per-pixel loss images",
                          requires=frozenset({"auxiliaries", "loss_images"})))
# App. C.5: a linear network over every monomial of the losses up to methods.auxilearn.degree (Figure 8).
register(combining_method("auxilearn_polynomial", "polynomial", 5,
                          "AuxiLearn, linear weights over a polynomial kernel of the losses (App. C.5)"))
# App. C.1's ablation: φ learned on the training set collapses toward STL.
register(combining_method("auxilearn_train_set", "linear", 4, "AuxiLearn linear with φ learned on the training set",
                          hyper_set="train"))


def build_labels(num_tasks: int, cfg: LabelsConfig, bilevel: Any, dataset: Any, data: Any, params: Any) -> Roles:
    """θ2 (and, with ``combine``, a loss-combining network, App. B.3) trained by the IFT outer update."""
    labels = GeneratedLabels(cfg, dataset, data, params, learns=True)
    total = 1 + len(labels.generated_tasks)  # the generated task replaces any given auxiliary
    if cfg.combine == "none":
        combiner, project = FixedWeights(total, 1.0), None
    else:
        combiner = AuxNetCombiner(total, cfg.combine, hidden_units=cfg.hidden_units,
                                  hidden_layers=cfg.hidden_layers, init_weight=1.0)
        project = combiner.project
    outer = ImplicitOuterUpdate([{"params": labels.hyper_parameters()}, *combiner.hyper_parameter_groups()], bilevel,
                                after_update=project)
    return Roles(combiner, outer, labels)


register(MethodSpec("auxilearn_labels", build_labels, group="generated", order=4, Config=LabelsConfig,
                    config_section="labels", uses_bilevel=True, uses_aux_set=True, needs_data=True,
                    requires=frozenset({"generated_labels"}), splits_hyper_batch=True,
                    description="AuxiLearn's label generator, θ2 by the IFT outer update"))
