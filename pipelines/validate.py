"""DVC stage `validate`: Great Expectations suite over data/raw; Data Docs under reports/."""

from hdkd.config import load_params
from hdkd.data.validate import validate
from hdkd.layout import REPO
from pipelines._entry import run_stage

if __name__ == "__main__":
    run_stage(lambda: validate(load_params(), REPO.raw, REPO.reports))
