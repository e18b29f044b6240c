import os

import pytest
import torch

from tests.helpers import toy_loader

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(2)


@pytest.fixture
def toy_loaders():
    return toy_loader(192, 3, seed=0), toy_loader(96, 3, seed=1, shuffle=False)


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory):
    """A tiny copy of the repository after one real `dvc repro` (shared: the chain is the slow part)."""
    from tests.repo import make_repo, run

    repo = make_repo(tmp_path_factory.mktemp("repo"))
    first = run(["dvc", "repro"], repo)
    (repo / "first_repro.log").write_text(first.stdout + first.stderr)
    return repo
