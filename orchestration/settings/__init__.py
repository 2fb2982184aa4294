"""What every verb stands on: the typed config, the training plan, the Ray runtime,
the MLflow schema and the masking of secrets."""
