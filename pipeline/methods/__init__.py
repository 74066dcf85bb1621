"""Method registry: ``METHODS.get(name)(num_tasks, cfg)`` builds a ``base.Method``."""
from __future__ import annotations

from pydantic import BaseModel

from pipeline.methods.base import Method, SharedTrunk, StepContext
from pipeline.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")

from pipeline.methods import auxilearn, dwa, fixed, gcs, gradnorm, mgda, uncertainty  # noqa: E402,F401  (register the methods)


def method_config_sections() -> dict[str, type[BaseModel]]:
    """``methods.<section>`` schemas of params.yaml, one per method family."""
    sections: dict[str, type[BaseModel]] = {}
    for name in METHODS:
        cls = METHODS.get(name)
        if cls.config_section is not None and cls.Config is not None:
            sections[cls.config_section] = cls.Config
    return sections


def build_method(name: str, num_tasks: int, params) -> Method:
    cls = METHODS.get(name)
    cfg = params.method_config(cls.config_section) if cls.config_section else None
    return cls(num_tasks, cfg)


__all__ = ["METHODS", "Method", "SharedTrunk", "StepContext", "build_method", "method_config_sections"]
