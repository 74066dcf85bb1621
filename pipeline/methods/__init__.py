"""Method registry: ``METHODS.get(name)(num_tasks, cfg)`` builds a ``base.Method``."""
from __future__ import annotations

from pydantic import BaseModel

from pipeline.methods.base import Batch, Method, SharedTrunk, StepContext
from pipeline.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")

from pipeline.methods import auxilearn, dwa, fixed, gcs, gradnorm, labels, mgda, reconstruction, uncertainty  # noqa: E402,F401  (register the methods)


def method_config_sections() -> dict[str, type[BaseModel]]:
    """``methods.<section>`` schemas of params.yaml, one per method family."""
    from pipeline.bilevel import BilevelConfig

    sections: dict[str, type[BaseModel]] = {}
    for name in METHODS:
        cls = METHODS.get(name)
        if cls.config_section is not None and cls.Config is not None:
            sections[cls.config_section] = cls.Config
        if cls.uses_bilevel:
            sections["bilevel"] = BilevelConfig
    return sections


def build_method(name: str, num_given_tasks: int, params, dataset=None, data=None) -> Method:
    """The method ``name`` for a dataset with ``num_given_tasks`` tasks (plus any it generates itself),
    bound to ``dataset``/``data`` when given (methods that build networks from the data need them)."""
    cls = METHODS.get(name)
    cfg = params.method_config(cls.config_section) if cls.config_section else None
    bilevel = params.method_config("bilevel") if cls.uses_bilevel else None
    num_tasks = num_given_tasks + len(cls.generated_tasks)
    method = cls(num_tasks, cfg, bilevel) if cls.uses_bilevel else cls(num_tasks, cfg)
    if dataset is not None:
        method.bind(dataset, data, params)
    return method


__all__ = ["METHODS", "Batch", "Method", "SharedTrunk", "StepContext", "build_method", "method_config_sections"]
