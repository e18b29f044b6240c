"""DVC stage `train_student`: the plain student (no distillation), the baseline HDKD must beat."""

from hdkd.config import load_params
from hdkd.train import train_stage
from pipelines._entry import run_stage

if __name__ == "__main__":
    run_stage(lambda: train_stage(load_params(), "student"))
