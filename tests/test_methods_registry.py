"""Method roles and discovery: a new method is one file, found by the registry and trained with nothing else edited."""
from __future__ import annotations

import math
import sys
import textwrap

import pytest
import torch

import pipeline.methods
from pipeline.config.params import parse_params
from pipeline.methods.base import GROUP_ORDER, LossCombiner, Method, OuterUpdate, method_order
from pipeline.core.registry import DATASETS, METHODS
from pipeline.engine.training import train_run

NEW_METHOD = '''
"""Half weights: every auxiliary at 0.5 (a method written as one file, in a test)."""
from pipeline.methods.base import MethodSpec, NoOuterUpdate, Roles, register
from pipeline.methods.combiners.fixed import FixedWeights


def build(num_tasks, cfg, bilevel, dataset, data, params):
    return Roles(FixedWeights(num_tasks, 0.5), NoOuterUpdate(), None)


register(MethodSpec("half_weights", build, group="fixed", order=1, description="every auxiliary at 0.5"))
'''


def test_a_new_method_is_one_file(tmp_path, monkeypatch):
    (tmp_path / "half_weights.py").write_text(textwrap.dedent(NEW_METHOD))
    METHODS.names()  # the shipped methods are discovered
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))  # the registry as it was, after the test
    monkeypatch.setattr(pipeline.methods, "__path__", [*pipeline.methods.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "pipeline.methods.half_weights", raising=False)
    assert "half_weights" not in METHODS
    METHODS.discover()
    assert "half_weights" in METHODS
    assert method_order().index("half_weights") == method_order().index("equal") + 1  # its declared place

    params = parse_params({"dataset": "toy2d", "method": "half_weights", "seeds": [0],
                           "datasets": {"toy2d": {"prepare": {"num_samples": 300}, "split": {"aux": 20, "val": 50, "test": 100},
                                                  "train": {"steps": 1, "eval_every": 1}}}})
    ds = DATASETS.get("toy2d")()
    folder = tmp_path / "toy2d"
    folder.mkdir()
    ds.prepare(params.dataset_config, folder)
    data = ds.load(folder)
    history = train_run(ds, data, ds.make_splits(data, params.split), params, 0, torch.device("cpu")).history
    assert history["step"] == [1] and math.isfinite(history["train_loss"][0])
    # task_weights sums ∂L_T/∂ℓ_j over the batch: 0.5 per sample for each auxiliary, 1 for the main task
    main, *aux = history["weights"][0]
    assert aux == pytest.approx([0.5 * main] * len(aux), rel=1e-6)
    sys.modules.pop("pipeline.methods.half_weights", None)


def test_every_method_is_three_roles_with_a_declared_place():
    """Every registry entry builds a combiner and an outer update (and, for generating methods, a generator),
    and declares its group, so comparisons and reports order methods without a hand-kept list."""
    assert sorted(method_order()) == METHODS.names()
    for name, spec in METHODS.items():
        assert spec.group in GROUP_ORDER and spec.name == name
        if spec.needs_data:
            continue
        method = spec(3)
        assert isinstance(method, Method)
        assert isinstance(method.combiner, LossCombiner) and isinstance(method.outer, OuterUpdate)
        assert method.generator is None and method.head_outputs() == 0
        losses = torch.ones(4, 3, 5, 5) if method.needs_loss_images else torch.ones(4, 3)
        assert method.task_weights(losses).shape == (3,)


def test_a_method_that_needs_data_refuses_to_be_built_without():
    with pytest.raises(ValueError, match="maxl builds its roles from the data"):
        METHODS.get("maxl")(2)
