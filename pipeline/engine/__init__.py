"""One training run and its bookkeeping: batch streams and the run's loop (training), a seed's model and data
(experiment), live per-step logging (live). Built on methods, models, datasets and metrics."""
