"""Primary-network registry: ``MODELS.get(name)(**kwargs)`` builds f(x; W)."""
from pipeline.registry import Registry

MODELS: Registry = Registry("model")

from pipeline.models import linear  # noqa: E402,F401
from pipeline.models import vision  # noqa: E402,F401
from pipeline.models import classifiers  # noqa: E402,F401
from pipeline.models import segnet  # noqa: E402,F401
from pipeline.models import pointcloud  # noqa: E402,F401

__all__ = ["MODELS"]
