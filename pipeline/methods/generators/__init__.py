"""Task generators: generated auxiliary tasks and their losses (role 3 of a method, see ``methods.base``)."""
