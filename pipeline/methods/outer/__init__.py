"""Outer updates: φ's step after W's, given W (role 2 of a method, see ``methods.base``)."""
