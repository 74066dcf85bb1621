"""Oxford-IIIT Pet (AuxiLearn Table 3 and 8): 37 cat and dog breeds, K-shot, with a generated auxiliary task."""
