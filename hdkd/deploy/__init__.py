"""From checkpoint to service: export, the compile stage (parity, int8, TensorRT, latency), the runtime behind
`hdkd predict`, and the MLflow pyfunc that `mlflow models serve` runs."""
