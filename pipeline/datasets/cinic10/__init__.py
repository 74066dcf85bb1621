"""CINIC-10 (MAXL Table 1): 32 x 32 images of the 10 CIFAR classes (CIFAR-10 and downsampled ImageNet), read from
the image folders ``train/ valid/ test/<class>/*.png`` as distributed, or a stand-in written in that layout."""
