"""SVHN cropped digits (AuxiLearn Table 3): 32 x 32 digit images from the official .mat files or a stand-in."""
