"""demo: small embedded height-field point clouds with every kind of auxiliary, so that every method runs on one
default dataset; ``task.Demo`` is the entry."""
