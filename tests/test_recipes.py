"""The published recipe, one switch; a preset trained at another image size is refused."""

import shutil

import pytest
from typer.testing import CliRunner

from hdkd.cli import app
from hdkd.config import ConfigError, load_params, params_from_dict
from hdkd.recipes import dvc_flags, recipe_overrides
from hdkd.training.train import train
from tests.helpers import REPO


def test_recipe_paper_writes_the_published_settings(tmp_path):
    params_file = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params_file)
    result = CliRunner().invoke(app, ["recipe", "paper", "--params", str(params_file)])
    assert result.exit_code == 0, result.output
    params = load_params(params_file)
    assert (params.model.preset, params.data.image_size) == ("paper", 224)
    teacher = params.teacher
    assert (teacher.opt, teacher.lr, teacher.sched, teacher.weight_decay) == ("adam", 1e-3, "none", 0.0)
    assert (teacher.batch_size, teacher.epochs) == (16, 200)
    for section in (params.student, params.distill):
        assert (section.opt, section.lr, section.weight_decay, section.sched) == ("adamw", 5e-5, 0.05, "cosine")
        assert (section.warmup_epochs, section.warmup_lr, section.min_lr) == (5, 2e-5, 2e-5)
        assert (section.batch_size, section.epochs) == (16, 200)
    distill = params.distill
    assert (distill.alpha, distill.temperature, distill.kind) == (0.5, 1.0, "soft")
    assert (distill.lambda_feat, distill.beta, distill.stages) == (10.0, 1.0, [1, 2, 3])
    assert params.tune.enabled is False and params.balance.enabled is True
    assert "# Every knob of the pipeline" in params_file.read_text()  # comments kept


def test_recipe_paper_turns_smote_off_for_brain_tumor_mri():
    params = params_from_dict({"data": {"source": "brain_tumor_mri", "path": "/data/mri"}})
    assert recipe_overrides("paper", params)["balance.enabled"] is False


def test_recipe_as_dvc_experiment_flags():
    flags = dvc_flags({"data.image_size": 224, "distill.stages": [1, 2, 3]})
    assert flags == ["-S", "data.image_size=224", "-S", "distill.stages=[1, 2, 3]"]


def test_unknown_recipe_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["recipe", "fast", "--params", str(REPO / "params.yaml")])
    assert result.exit_code != 0 and "unknown recipe 'fast'" in result.output


def test_a_preset_trained_at_another_image_size_is_refused(tmp_path):
    params = params_from_dict({"model": {"preset": "tiny"}, "data": {"image_size": 64}})
    with pytest.raises(ConfigError, match=r"data.image_size 64 is not the image size of model.preset 'tiny' \(32 px\)"):
        train(params, "student", tmp_path / "train.npz", tmp_path / "val.npz", tmp_path / "out")
    assert not (tmp_path / "out").exists()
