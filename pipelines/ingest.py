"""DVC stage `ingest`: the configured source -> data/raw (normalised PNGs + manifest)."""

from hdkd.config import load_params
from hdkd.data.ingest import ingest
from hdkd.layout import REPO
from pipelines._entry import run_stage

if __name__ == "__main__":
    run_stage(lambda: ingest(load_params(), REPO.raw))
