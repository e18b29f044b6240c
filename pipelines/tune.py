"""DVC stage `tune`: the Optuna study over the distillation hyper-parameters (before `distill`)."""

from hdkd.config import load_params
from hdkd.tune import tune_stage
from pipelines._entry import run_stage

if __name__ == "__main__":
    run_stage(lambda: tune_stage(load_params()))
