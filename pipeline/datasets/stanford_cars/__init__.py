"""Stanford Cars (AuxiLearn Table 3): 196 car models, K-shot, with a generated auxiliary task."""
