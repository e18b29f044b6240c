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
