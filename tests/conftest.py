import contextlib
import os

import pytest
import torch

from tests.helpers import toy_loader

os.environ.setdefault("TQDM_DISABLE", "1")
# `make test` runs two pytest workers on two cores: one thread each, or they fight over the cores.
torch.set_num_threads(1 if "PYTEST_XDIST_WORKER" in os.environ else 2)


@contextlib.contextmanager
def _environment_restored():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


# MLflow's set_tracking_uri/set_registry_uri write MLFLOW_* variables into os.environ: without these a store set
# by a test (or by a module's fixture, at its teardown) leaks into the subprocesses of later tests in the worker.
@pytest.fixture(autouse=True)
def _test_environment_restored():
    with _environment_restored():
        yield


@pytest.fixture(autouse=True, scope="module")
def _module_environment_restored():
    with _environment_restored():
        yield


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
