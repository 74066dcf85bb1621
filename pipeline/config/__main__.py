from pipeline.config.params import cli

cli()
