"""Training methods, registered in ``pipeline.core.registry.METHODS`` (see ``base``)."""
