"""params.yaml: its validation and composition (params), the stage entry-point decorator (stage), and
``python -m pipeline.config skeleton|defaults``."""
