"""CIFAR-10 (AuxiLearn Table 3): 32 x 32 images of 10 classes, from the python-version pickles or a stand-in."""
