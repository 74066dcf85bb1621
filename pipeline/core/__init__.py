"""What every part of the workbench builds on: config types (schema), atomic I/O, paths, registries, progress
lines and numerical-fault checks. Imports nothing else of ``pipeline``."""
