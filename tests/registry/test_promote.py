"""`hdkd promote` against a real local MLflow store: compare, refuse what would mislead, record who."""

import json
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from hdkd.config import params_from_dict
from hdkd.registry.promote import RegistryError, promote
from hdkd.tracking import use_store

NAME = "hdkd-student"


@pytest.fixture
def registry(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    use_store(uri)  # runs and registry: the registry URI does not follow set_tracking_uri
    client = MlflowClient()
    client.create_registered_model(NAME)
    for version, (classes, f1) in enumerate(((["a", "b"], "0.70"), (["a", "b"], "0.80"), (["a", "c"], "0.90")), 1):
        source = tmp_path / f"v{version}"
        source.mkdir()
        client.create_model_version(
            NAME, str(source), tags={"classes": json.dumps(classes), "test_macro_f1": f1, "preset": "tiny"}
        )
    client.set_registered_model_alias(NAME, "champion", "1")
    return uri, client, params_from_dict({"mlflow": {"tracking_uri": uri}})


def test_promote_compares_moves_the_alias_and_records_who_and_when(registry):
    _, client, params = registry
    result = promote(params, NAME, 2)
    assert result["promoted"] and result["message"] == f"{NAME} version 2 is now @champion"
    rows = {row[0]: row[1:] for row in result["rows"]}
    assert rows["version"] == ("2", "1") and rows["test_macro_f1"] == ("0.80", "0.70")
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    tags = client.get_model_version(NAME, "2").tags
    assert tags["promoted_by"] and tags["promoted_at"].startswith("20") and tags["previous_champion"] == "1"


def test_promoting_the_champion_again_says_so(registry):
    _, _, params = registry
    result = promote(params, NAME, 1)
    assert not result["promoted"] and "already @champion" in result["message"]


def test_other_classes_are_refused_unless_forced(registry):
    _, client, params = registry
    with pytest.raises(RegistryError, match=r"predicts classes \['a', 'c'\].*\['a', 'b'\].*--force"):
        promote(params, NAME, 3)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert promote(params, NAME, 3, force=True)["promoted"]


def test_unknown_model_and_version_say_what_exists(registry):
    _, _, params = registry
    with pytest.raises(RegistryError, match=r"no registered model 'hdkd-studnet'.*registered: hdkd-student"):
        promote(params, "hdkd-studnet", 1)
    with pytest.raises(RegistryError, match=r"has no version 7 \(versions: 1, 2, 3\)"):
        promote(params, NAME, 7)


def test_promote_stays_off_torch(registry, tmp_path):
    uri, _, _ = registry
    (tmp_path / "params.yaml").write_text(f"mlflow:\n  tracking_uri: {uri}\n")
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from hdkd.cli import app\n"
        "runner = CliRunner()\n"
        "assert runner.invoke(app, ['promote', '--help']).exit_code == 0\n"
        f"result = runner.invoke(app, ['promote', '{NAME}', '2', '--params', 'params.yaml'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(result.output)\n"
        "print('heavy:', sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "is now @champion" in done.stdout and "heavy: []" in done.stdout
