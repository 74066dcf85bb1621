"""Code shared by several datasets' preparation and tasks: the ``prepare`` stage depends on this folder."""
