"""toy2d: the AuxiLearn paper's 2-D linear regression with one helpful and one harmful auxiliary (§5.1)."""
