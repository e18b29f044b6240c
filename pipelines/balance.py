"""DVC stage `balance`: SMOTE on the train split, class by class -> data/balanced."""

from hdkd.config import load_params
from hdkd.data.balance import balance
from hdkd.layout import REPO
from pipelines._entry import run_stage

if __name__ == "__main__":
    run_stage(lambda: balance(load_params(), REPO.split, REPO.balanced))
