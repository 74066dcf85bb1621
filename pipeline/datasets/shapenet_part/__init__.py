"""ShapeNet Part (AuxiLearn App. C.9): per-point part segmentation of 3D shapes; ``task.ShapeNetPart`` is the entry."""
