"""DVC stage `register`: the trained networks into MLflow's model registry, with aliases."""

from hdkd.config import load_params
from hdkd.registry import register
from pipelines._entry import run_stage

if __name__ == "__main__":
    run_stage(lambda: register(load_params()))
