"""CIFAR-100: 32 x 32 images, 100 fine classes in 20 superclasses, from the python-version pickles or a stand-in."""
