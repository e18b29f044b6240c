"""The MLflow model registry: the register stage and `hdkd promote`."""
