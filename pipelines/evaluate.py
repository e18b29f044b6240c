"""DVC stage `evaluate`: teacher, plain student and HDKD student on the untouched test split."""

from hdkd.config import load_params
from hdkd.evaluate import evaluate_stage
from pipelines._entry import run_stage

if __name__ == "__main__":
    run_stage(lambda: evaluate_stage(load_params()))
