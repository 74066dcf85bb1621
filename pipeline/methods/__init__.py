"""Training methods, registered in ``pipeline.registry.METHODS`` (see ``base``)."""
