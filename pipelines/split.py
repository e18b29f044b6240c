"""DVC stage `split`: data/raw -> data/split (stratified, grouped train/val/test + decoded caches)."""

from hdkd.config import load_params
from hdkd.data.split import split
from hdkd.layout import REPO
from pipelines._entry import run_stage

if __name__ == "__main__":
    run_stage(lambda: split(load_params(), REPO.raw, REPO.split))
