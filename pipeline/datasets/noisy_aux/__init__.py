"""noisy_aux: K auxiliary regressions whose label noise grows with the task index (AuxiLearn App. C.3)."""
