import pytest
import torch

from hdkd.config import DistillParams, TrainParams
from hdkd.models import build_model
from hdkd.training.callbacks import Callback
from hdkd.training.checkpoint import CheckpointError, load_checkpoint, load_model_state
from hdkd.training.loop import Trainer, validation_metrics

CLASSES = ["a", "b", "c"]
FAST = TrainParams(
    epochs=4,
    batch_size=16,
    opt="adamw",
    lr=3e-3,
    weight_decay=0.01,
    sched="cosine",
    warmup_epochs=1,
    warmup_lr=1e-4,
    min_lr=1e-4,
)


def make_trainer(kind, out_dir, params=FAST, teacher=None, callbacks=()):
    torch.manual_seed(0)
    model = build_model(kind, "tiny", len(CLASSES))
    return Trainer(
        model,
        kind,
        params,
        out_dir,
        seed=7,
        class_names=CLASSES,
        teacher=teacher,
        callbacks=callbacks,
        meta={"kind": kind},
        progress=False,
    )


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    from tests.helpers import toy_loader

    trainer = make_trainer("teacher", tmp_path_factory.mktemp("teacher"))
    result = trainer.fit(toy_loader(192, 3, seed=0), toy_loader(96, 3, seed=1, shuffle=False))
    return trainer.model, result


def test_teacher_learns_above_chance_and_keeps_best_on_validation(trained_teacher, toy_loaders):
    model, result = trained_teacher
    _, val = toy_loaders
    metrics = validation_metrics(model, val, CLASSES)
    assert metrics["accuracy"] > 0.6  # chance is 1/3
    assert result.best_score == max(h["val_macro_f1"] for h in result.history)
    assert load_checkpoint(result.best_path)["meta"]["epoch"] == result.best_epoch


def test_hdkd_student_learns_above_chance(trained_teacher, toy_loaders, tmp_path):
    teacher, _ = trained_teacher
    params = DistillParams(**FAST.model_dump(), lambda_feat=1.0)
    trainer = make_trainer("distilled", tmp_path, params, teacher=teacher)
    result = trainer.fit(*toy_loaders)
    assert result.best_score > 0.5
    assert "train_loss_feat" in result.history[-1] and "train_loss_logit" in result.history[-1]


def test_hdkd_step_runs_each_network_once(trained_teacher, toy_loaders, tmp_path):
    teacher, _ = trained_teacher
    params = DistillParams(**{**FAST.model_dump(), "epochs": 1})
    trainer = make_trainer("distilled", tmp_path, params, teacher=teacher)
    calls = {"teacher": 0, "student": 0}
    handles = [
        # the trainer distils from its own inference copy of the teacher (hdkd.models.fuse.prepare_teacher)
        trainer.teacher.stage1.register_forward_hook(lambda *_: calls.__setitem__("teacher", calls["teacher"] + 1)),
        trainer.model.stage1.register_forward_hook(lambda *_: calls.__setitem__("student", calls["student"] + 1)),
    ]
    train_loader, _ = toy_loaders
    trainer.train_epoch(train_loader, 0)
    for handle in handles:
        handle.remove()
    assert calls == {"teacher": len(train_loader), "student": len(train_loader)}


class StopAfter(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_after_interruption_reaches_the_same_weights(toy_loaders, tmp_path):
    full = make_trainer("student", tmp_path / "full")
    full.fit(*toy_loaders)

    interrupted = make_trainer("student", tmp_path / "cut", callbacks=[StopAfter(1)])
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(*toy_loaders)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1

    resumed = make_trainer("student", tmp_path / "cut")
    result = resumed.fit(*toy_loaders, resume=True)
    assert len(result.history) == FAST.epochs
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_resume_refuses_a_checkpoint_written_with_other_settings(toy_loaders, tmp_path):
    make_trainer("student", tmp_path, FAST.model_copy(update={"epochs": 1})).fit(*toy_loaders)
    with pytest.raises(CheckpointError, match="other training settings"):
        make_trainer("student", tmp_path).fit(*toy_loaders, resume=True)


def test_checkpoint_with_missing_or_extra_keys_is_refused(tmp_path):
    model = build_model("student", "tiny", 3)
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if not k.startswith("head.")}
    with pytest.raises(CheckpointError, match=r"missing keys \['head.bias', 'head.weight'\]"):
        load_model_state(model, missing, "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys \['surplus'\]"):
        load_model_state(model, {**state, "surplus": torch.zeros(1)}, "ckpt.pt")
    other_classes = build_model("student", "tiny", 5).state_dict()
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model_state(model, other_classes, "ckpt.pt")


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)


def test_training_log_outside_a_terminal_has_one_line_per_epoch(tmp_path):
    """`dvc repro > log`: no carriage-return progress updates, one summary line per epoch."""
    import subprocess
    import sys

    script = f"""
import torch
from hdkd.config import TrainParams
from hdkd.training.loop import Trainer
from hdkd.models import build_model
from tests.helpers import toy_loader
model = build_model("student", "tiny", 3, img_size=32)
settings = TrainParams(epochs=3, lr=1e-3, warmup_epochs=0)
trainer = Trainer(model, "student", settings, {str(tmp_path)!r}, 0, ["a", "b", "c"])
trainer.fit(toy_loader(48, 3), toy_loader(24, 3, seed=1, shuffle=False))
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "TQDM_DISABLE"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "\r" not in output
    epochs = [line for line in output.splitlines() if line.startswith("student epoch ")]
    assert [line.split(":")[0] for line in epochs] == [f"student epoch {i}/3" for i in (1, 2, 3)]


def scripted_validation(monkeypatch, curve):
    """Validation macro-F1 read from `curve`, one value per epoch, instead of measured (the training is real)."""
    scores = iter(curve)

    def validation_metrics(*_):
        score = next(scores)
        return {"accuracy": score, "macro_f1": score}

    monkeypatch.setattr("hdkd.training.loop.validation_metrics", validation_metrics)


def test_early_stopping_ends_patience_epochs_after_the_best_on_a_scripted_curve(monkeypatch, toy_loaders, tmp_path):
    # Best at epoch 2 (1-based); epoch 4 only ties it, which is no improvement; patience 3 ends the run after
    # epoch 5, so the 0.9 of epoch 7 is never seen.
    scripted_validation(monkeypatch, [0.2, 0.5, 0.4, 0.5, 0.45, 0.3, 0.9, 0.9, 0.9, 0.9])
    params = FAST.model_copy(update={"epochs": 10, "patience": 3})
    result = make_trainer("student", tmp_path, params).fit(*toy_loaders)
    assert len(result.history) == 5
    assert (result.best_epoch, result.best_score) == (1, 0.5)
    assert load_checkpoint(result.best_path)["meta"]["epoch"] == 1
    assert not params.hit_max(result.best_epoch)

    # Resuming a run that converged trains nothing more.
    scripted_validation(monkeypatch, [])
    resumed = make_trainer("student", tmp_path, params).fit(*toy_loaders, resume=True)
    assert len(resumed.history) == 5


def test_a_run_still_improving_at_its_maximum_is_said_to_have_hit_it(monkeypatch, toy_loaders, tmp_path):
    scripted_validation(monkeypatch, [0.1, 0.2, 0.3, 0.4])
    params = FAST.model_copy(update={"epochs": 4, "patience": 2})
    result = make_trainer("student", tmp_path, params).fit(*toy_loaders)
    assert len(result.history) == 4 and result.best_epoch == 3
    assert params.hit_max(result.best_epoch)
    assert FAST.hit_max(0)  # without a patience every run trains all its epochs


def test_vanilla_kd_trains_the_plain_student_network_with_hintons_loss(trained_teacher, toy_loaders, tmp_path):
    from hdkd.config import Params
    from hdkd.training.checkpoint import build_from_meta, load_trained
    from hdkd.training.losses import HintonKDLoss
    from hdkd.training.train import model_meta

    teacher, _ = trained_teacher
    params = Params(distill=DistillParams(**FAST.model_dump(), method="vanilla_kd"))
    meta = model_meta(params, "distilled", CLASSES)
    model = build_from_meta(meta)
    assert model.head_dist is None  # no distillation token or head: the plain student's network
    trainer = Trainer(
        model, "distilled", params.distill, tmp_path, 7, CLASSES, teacher=teacher, meta=meta, progress=False
    )
    assert isinstance(trainer.distill_loss, HintonKDLoss)
    result = trainer.fit(*toy_loaders)
    assert result.best_score > 0.5
    reloaded, reloaded_meta = load_trained(result.best_path)
    assert reloaded.head_dist is None and reloaded_meta["distillation_token"] is False
