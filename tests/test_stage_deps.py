"""dvc.yaml's code deps are the modules each stage imports (hdkd/stage_deps.py), and editing one of them makes
`dvc status` flag exactly the stages that import it."""

import json

import pytest

from hdkd.stage_deps import check, derived_deps, import_graph, write
from hdkd.stages import STAGES
from tests.helpers import REPO
from tests.repo import run

QUANTIZE = "hdkd/deploy/quantize.py"


def test_dvc_yaml_lists_the_modules_each_stage_imports():
    problems = check(REPO / "dvc.yaml")
    assert not problems, "dvc.yaml is out of date, run `make deps`:\n" + "\n".join(problems)


def test_lazy_imports_count_for_the_stage_that_runs_them():
    graph = import_graph()
    deps = {stage: derived_deps(stage, graph) for stage in STAGES}
    # hdkd/stages.py imports hdkd.deploy.compile inside the compile stage's function only
    assert [stage for stage, paths in deps.items() if QUANTIZE in paths] == ["compile"]
    assert deps["compile"][QUANTIZE].endswith("hdkd.deploy.compile -> hdkd.deploy.quantize")
    # the training stages pick the best checkpoint with hdkd/training/metrics.py, two imports down
    assert all("hdkd/training/metrics.py" in deps[stage] for stage in ("train_teacher", "train_student", "distill"))
    assert "hdkd/deploy/pyfunc_student.py" in deps["register"]  # run by path (models-from-code), not imported
    assert all("hdkd/errors.py" not in paths for paths in deps.values())  # the commented NO_RESULT list
    assert all(next(iter(paths)) == f"pipelines/{stage}.py" for stage, paths in deps.items())


def _without_quantize_in_compile(text: str) -> str:
    head, compile_stage = text.split("\n  compile:\n")
    return head + "\n  compile:\n" + compile_stage.replace(f"      - {QUANTIZE}\n", "", 1)


def test_the_check_names_the_stage_and_the_module_it_misses(tmp_path):
    stale = tmp_path / "dvc.yaml"
    stale.write_text(_without_quantize_in_compile((REPO / "dvc.yaml").read_text()))
    assert check(stale) == [
        f"compile: imports {QUANTIZE} (pipelines.compile -> hdkd.stages -> hdkd.deploy.compile -> "
        "hdkd.deploy.quantize) but its deps do not list it"
    ]


def test_rewriting_restores_the_derived_deps_and_keeps_the_rest(tmp_path):
    current = (REPO / "dvc.yaml").read_text()
    stale = _without_quantize_in_compile(current).replace(
        "      - pipelines/ingest.py\n", "      - pipelines/ingest.py\n      - hdkd/cli.py\n", 1
    )
    path = tmp_path / "dvc.yaml"
    path.write_text(stale)
    assert check(path) and write(path) == ["ingest", "compile"]
    assert path.read_text() == current  # comments, data deps, params and outs untouched
    assert write(path) == []


@pytest.mark.slow
def test_editing_a_module_flags_exactly_the_stages_that_import_it(pipeline_repo):
    def flagged() -> dict:
        return json.loads(run(["dvc", "status", "--json"], pipeline_repo).stdout or "{}")

    graph = import_graph()
    before = flagged()
    for module in (QUANTIZE, "hdkd/training/metrics.py", "hdkd/tune/best.py"):
        expected = {stage for stage in STAGES if module in derived_deps(stage, graph)}
        path = pipeline_repo / module
        original = path.read_bytes()
        try:
            path.write_bytes(original + b"# an edit that changes no result, but DVC cannot know that\n")
            after = flagged()
        finally:
            path.write_bytes(original)
        assert {stage for stage in after if after[stage] != before.get(stage)} == expected, module
    assert flagged() == before
