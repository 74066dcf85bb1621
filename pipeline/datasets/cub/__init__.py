"""CUB-200-2011 (species with attribute auxiliaries) and its procedural stand-in."""
