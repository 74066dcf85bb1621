"""Loss combiners: per-task losses -> L_T and W's gradient (role 1 of a method, see ``methods.base``)."""
