"""DVC stage `distill`: HDKD, the student distilled from the trained teacher (logits + features), with
the tune stage's best distill settings applied (params.yaml as it is when `tune.enabled: false`)."""

from hdkd.config import load_params
from hdkd.train import train_stage
from hdkd.tune import apply_best_params
from pipelines._entry import run_stage

if __name__ == "__main__":
    run_stage(lambda: train_stage(apply_best_params(load_params()), "distilled"))
