import subprocess
import sys

import pytest
import yaml

from hdkd.config import ConfigError, load_params, save_overrides
from tests.repo import REPO


def _differences(written: dict, loaded: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in written.items():
        if key not in loaded:
            found.append(f"{prefix}{key}: dropped")
        elif isinstance(value, dict) and isinstance(loaded[key], dict):
            found += _differences(value, loaded[key], f"{prefix}{key}.")
        elif loaded[key] != value:
            found.append(f"{prefix}{key}: {value!r} in the file, {loaded[key]!r} after loading")
    return found


def test_repository_params_load_exactly_as_written():
    """Every value of params.yaml reaches the typed config unchanged: none dropped, none coerced (a `1e-3`
    that YAML reads as a string would be)."""
    written = yaml.safe_load((REPO / "params.yaml").read_text())
    loaded = load_params(REPO / "params.yaml").model_dump(mode="json")
    assert _differences(written, loaded) == []


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"sorce": "synthetic"}}))
    with pytest.raises(ConfigError, match=r"data\.sorce: unknown key"):
        load_params(path)


def test_bad_value_names_the_key_and_the_allowed_values(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "huge"}}))
    with pytest.raises(ConfigError, match=r"model\.preset: .*'paper', 'small' or 'tiny'"):
        load_params(path)


def test_real_source_needs_a_path(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "ham10000"}}))
    with pytest.raises(ConfigError, match=r"data\.path is required"):
        load_params(path)


def test_overrides_are_validated_and_written_keeping_comments(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("# knobs\ndata:\n  path: null  # folder\ndistill:\n  alpha: 0.5  # DeiT weight\n")
    with pytest.raises(ConfigError, match=r"distill\.alpha"):
        save_overrides(path, {"distill.alpha": 3.0})
    save_overrides(path, {"distill.alpha": 0.7, "tune.timeout": None})
    text = path.read_text()
    assert "alpha: 0.7" in text and "# DeiT weight" in text and "# knobs" in text
    assert "path: null  # folder" in text and "timeout: null" in text


def test_stage_entry_fails_fast_with_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"teacher": {"epochz": 3}}))
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.train_teacher"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 1
    assert "teacher.epochz: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
