"""Code shared by several datasets' preparation and tasks: every ``prepare@<name>`` stage depends on this folder."""
