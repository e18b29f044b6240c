"""The registry after real pipeline runs: a DVC experiment that changes only the distillation adds a version of
the HDKD student alone, with its lineage, paired with the champion by `register` and again by `hdkd promote`."""

import pytest
import yaml
from mlflow import MlflowClient

from hdkd.files import sha256_file
from hdkd.registry.lineage import params_digest
from hdkd.tracking import use_store
from tests.repo import run

NAMES = ("hdkd-teacher", "hdkd-student-baseline", "hdkd-student")
EXPERIMENT = "longer-distill"


@pytest.mark.slow
def test_a_distillation_change_versions_the_student_only_and_promotion_pairs_it(pipeline_repo):
    use_store(f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    client = MlflowClient()

    def versions() -> dict[str, int]:
        return {name: len(client.search_model_versions(f"name = '{name}'")) for name in NAMES}

    before, champion = versions(), client.get_model_version_by_alias("hdkd-student", "champion")
    epochs = yaml.safe_load((pipeline_repo / "params.yaml").read_text())["distill"]["epochs"]
    done = run(["dvc", "exp", "run", "-n", EXPERIMENT, "-S", f"distill.epochs={epochs + 1}"], pipeline_repo)
    for name in NAMES[:2]:
        assert f"{name} unchanged: version {before[name]} kept" in done.stdout
    assert versions() == {**before, "hdkd-student": before["hdkd-student"] + 1}

    number = str(before["hdkd-student"] + 1)
    new = client.get_model_version("hdkd-student", number)
    trained = client.get_run(new.tags["run_id"])
    assert new.tags["dvc_experiment"] == EXPERIMENT == trained.data.tags["dvc.exp_name"]
    assert new.tags["git_commit"] == run(["git", "rev-parse", "HEAD"], pipeline_repo).stdout.strip()
    assert new.tags["params_sha256"] == params_digest(trained.data.params)
    assert trained.data.params["distill.epochs"] == str(epochs + 1)
    assert new.tags["data_manifest_sha256"] == sha256_file(pipeline_repo / "data/split/manifest.csv")
    assert new.tags["checkpoint_sha256"] == sha256_file(pipeline_repo / "models/distilled/best.pt")
    assert f"DVC experiment {EXPERIMENT}" in new.description and new.tags["evaluate_run_id"] in new.description
    paired = f"Against the champion (version {champion.version}) on the same"
    assert paired in new.description and new.tags["paired.champion_version"] == str(champion.version)

    promoted = run(["hdkd", "promote", "hdkd-student", number], pipeline_repo, check=False)
    print(promoted.stdout, promoted.stderr)  # the paired output of a real promotion, shown with -s
    verdict = client.get_model_version("hdkd-student", number).tags["paired.verdict"]
    assert verdict in ("better", "worse", "cannot tell")
    if verdict == "worse":  # refused; the rest of the session expects the newest version as champion
        assert promoted.returncode == 1 and paired in promoted.stderr and "--force" in promoted.stderr
        promoted = run(["hdkd", "promote", "hdkd-student", number, "--force"], pipeline_repo)
    assert promoted.returncode == 0 and paired in promoted.stdout and "Verdict:" in promoted.stdout
    assert f"Lineage: trained by MLflow run {new.tags['run_id']}" in promoted.stdout
    assert str(client.get_model_version_by_alias("hdkd-student", "champion").version) == number
