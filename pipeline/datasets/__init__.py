"""Datasets, one package each, registered in ``pipeline.registry.DATASETS`` (see ``base.Dataset``)."""
