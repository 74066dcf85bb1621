"""Primary networks f(x; W), registered in ``pipeline.core.registry.MODELS``."""
