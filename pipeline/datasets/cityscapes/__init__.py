"""Cityscapes (AuxiLearn App. C.8): 19-class segmentation with 7-class, 2-class and depth auxiliaries."""
