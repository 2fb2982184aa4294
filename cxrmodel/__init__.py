"""The paper's method in pure PyTorch: DenseIBN-121, heads, discriminators, losses, temporal
ensemble, schedules, metrics and one training step. No Ray, no MLflow, nothing from data_prep.

Import the modules themselves (`from cxrmodel.losses import ...`): this package file stays empty so
that `cxrmodel.labels` and `cxrmodel.schedules` load without torch."""
