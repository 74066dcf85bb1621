"""MNIST (MAXL Table 1): 28 x 28 grayscale handwritten digits, from the IDX files (gzipped or not) or a stand-in."""
