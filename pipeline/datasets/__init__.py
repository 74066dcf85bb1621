"""Datasets, one package each, registered in ``pipeline.core.registry.DATASETS`` (see ``base.Dataset``)."""
