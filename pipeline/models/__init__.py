"""Primary networks f(x; W), registered in ``pipeline.registry.MODELS``."""
