"""Train one network kind from prepared split arrays: the code behind the training stages,
the Prefect tasks and `hdkd train`."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import torch
from torch.utils.data import DistributedSampler

from hdkd.config import ConfigError, Params, TrainParams
from hdkd.data import DataError
from hdkd.data.loading import SplitArrays, eval_transform, load_split, make_loader
from hdkd.files import atomic_path, sha256_file, write_json
from hdkd.kinds import NETWORKS
from hdkd.layout import REPO, Layout
from hdkd.models import PRESETS
from hdkd.tracking import flat_params, pip_requirements, stage_run
from hdkd.training.callbacks import Callback, FitResult, MlflowCallback
from hdkd.training.checkpoint import CheckpointError, ModelMeta, build_from_meta, load_trained
from hdkd.training.distributed import SINGLE, World, init_world, relaunch_with_torchrun, share_cores, under_torchrun
from hdkd.training.loop import Resume, Trainer, seed_everything

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo
    from torch import nn


def default_device(world: World = SINGLE) -> torch.device:
    return torch.device(f"cuda:{world.local_rank}" if torch.cuda.is_available() else "cpu")


def train_params_for(params: Params, kind: str) -> TrainParams:
    section: TrainParams = getattr(params, NETWORKS[kind].section)
    return section


def model_meta(params: Params, kind: str, classes: Sequence[str]) -> ModelMeta:
    """What a checkpoint needs to rebuild its network without params.yaml."""
    meta: ModelMeta = {
        "kind": kind,
        "preset": params.model.preset,
        "block": params.model.block,
        "img_size": params.data.image_size,
        "classes": list(classes),
    }
    if kind == "distilled" and params.distill.method == "vanilla_kd":
        meta["distillation_token"] = False  # Hinton's KD trains the plain student network
    elif kind == "distilled":
        # With alpha 0 the distillation head gets no gradient: predict with the class head alone.
        meta["predict_heads"] = "class" if params.distill.alpha == 0 else "both"
    return meta


def data_identity(
    train_data: str | Path, val_data: str | Path, teacher_path: str | Path | None = None
) -> dict[str, Any]:
    """The bytes a run learns from, for its `last.pt` identity: a run on other data never continues it."""
    identity: dict[str, Any] = {"data": {"train": sha256_file(train_data), "val": sha256_file(val_data)}}
    if teacher_path is not None:
        identity["teacher"] = sha256_file(teacher_path)
    return identity


def _check_same_classes(train: SplitArrays, val: SplitArrays, train_data: str | Path, val_data: str | Path) -> None:
    if list(train.classes) != list(val.classes):
        raise DataError(
            f"{train_data} and {val_data} name different classes ({train.classes} vs {val.classes}); "
            "write both with the same split stage run (dvc repro split balance)"
        )


def train(
    params: Params,
    kind: str,
    train_data: str | Path,
    val_data: str | Path,
    out_dir: str | Path,
    teacher_path: str | Path | None = None,
    resume: Resume = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    world: World = SINGLE,
) -> FitResult:
    """Train `kind` (`teacher`, `student` or `distilled`); checkpoints go to `out_dir`.

    Under torchrun (`world` from `init_world()`), each rank trains its shard of every epoch.
    `resume`: True continues `out_dir/last.pt` or fails if it is another run's; "unfinished" continues it
    only if it is an unfinished run of this same job (settings, seed, model, world size, data, teacher).
    """
    if kind not in NETWORKS:
        raise ConfigError(f"unknown model kind {kind!r}: use one of {', '.join(NETWORKS)}")
    step = 8 * PRESETS[params.model.preset].patch  # the students' DFLT cuts the 1/8-scale map into patches
    if kind != "teacher" and params.data.image_size % step:
        raise ConfigError(
            f"data.image_size {params.data.image_size} does not fit the {kind} at model.preset "
            f"{params.model.preset!r}: use a multiple of {step}"
        )
    own_size = PRESETS[params.model.preset].img_size
    if params.data.image_size != own_size:
        raise ConfigError(
            f"data.image_size {params.data.image_size} is not the image size of model.preset "
            f"{params.model.preset!r} ({own_size} px): set data.image_size: {own_size}, or pick the preset made "
            f"for your size (see `hdkd info`; `hdkd recipe paper` sets the published 224 px recipe)"
        )
    train_split, val_split = load_split(train_data), load_split(val_data)
    _check_same_classes(train_split, val_split, train_data, val_data)
    classes = list(train_split.classes)
    teacher = None
    if kind == "distilled":
        if teacher_path is None:
            raise CheckpointError("HDKD distillation needs the trained teacher: pass its best.pt (--teacher)")
        teacher, teacher_meta = load_trained(teacher_path)
        if teacher_meta["kind"] != "teacher":
            raise CheckpointError(
                f"{teacher_path}: holds a {teacher_meta['kind']!r} network, not a teacher; pass the teacher's "
                "best.pt (models/teacher/best.pt)"
            )
        if teacher_meta["classes"] != classes or teacher_meta["preset"] != params.model.preset:
            raise CheckpointError(
                f"{teacher_path}: teacher was trained for preset {teacher_meta['preset']!r} and classes "
                f"{teacher_meta['classes']}, this run has {params.model.preset!r} and {classes}; retrain the teacher"
            )
    section = train_params_for(params, kind)
    seed = params.seed if section.seed is None else section.seed
    seed_everything(seed)
    meta = model_meta(params, kind, classes)
    model = build_from_meta(meta)
    loader_args: dict[str, Any] = {
        "image_size": params.data.image_size,
        "batch_size": section.batch_size,
        "num_workers": params.data.num_workers,
    }
    trainer = Trainer(
        model,
        kind,
        section,
        out_dir,
        seed,
        classes,
        teacher=teacher,
        callbacks=callbacks,
        meta=meta,
        device=default_device(world),
        progress=progress,
        world=world,
        identity=data_identity(train_data, val_data, teacher_path),
    )
    sampler: DistributedSampler | None = None
    if world.distributed:
        # The sampler needs only the length; a range stands in for the dataset make_loader builds.
        indices: Any = range(len(train_split))
        sampler = DistributedSampler(indices, world.size, world.rank, shuffle=True, seed=seed)
    return trainer.fit(
        make_loader(train_split, train=True, sampler=sampler, **loader_args),
        make_loader(val_split, train=False, **loader_args),
        resume=resume,
    )


def _example_batch(split: SplitArrays, image_size: int) -> np.ndarray:
    """Two preprocessed validation images: MLflow's input example (2+ keeps the batch axis dynamic)."""
    return eval_transform(image_size)(torch.from_numpy(split.images[:2]).permute(0, 3, 1, 2)).numpy()


def _write_learning_curve(path: Path, history: Sequence[dict[str, float]]) -> None:
    columns = sorted({key for row in history for key in row})
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", *columns])
        writer.writeheader()
        for epoch, row in enumerate(history, start=1):
            writer.writerow({"epoch": epoch, **row})


def train_stage(params: Params, kind: str, layout: Layout = REPO, progress: bool = True) -> dict[str, Any]:
    """A pipeline training stage: train `kind`, track it in MLflow, log the model, write reports.

    With `distributed.nproc` > 1 the stage re-runs itself under torchrun; rank 0 alone tracks and writes.
    The run trains in `layout.unfinished(kind)`; a stage killed mid-run resumes from the `last.pt` there
    when rerun, if that checkpoint is an unfinished run of this same job; else it trains afresh. A finished
    run copies its `best.pt` to `models/<kind>/` and leaves nothing else behind.
    """
    if params.distributed.nproc > 1 and not under_torchrun():
        relaunch_with_torchrun(NETWORKS[kind].stage, params.distributed.nproc)
        return json.loads(layout.stage_summary(kind).read_text())
    world = init_world()
    share_cores(params.data.num_workers)
    train_data, val_data = layout.balanced / "train.npz", layout.split / "val.npz"
    work_dir = layout.unfinished(kind)
    teacher_path = layout.checkpoint("teacher") if kind == "distilled" else None
    if not world.is_main:
        train(
            params, kind, train_data, val_data, work_dir, teacher_path, resume="unfinished", progress=False, world=world
        )
        return {}
    section = NETWORKS[kind].section
    section_params = train_params_for(params, kind)
    with stage_run(params, f"train_{kind}", manifest=layout.balanced / "manifest.csv", kind=kind) as run:
        mlflow.log_params(flat_params(params, (section, "model", "data", "balance")))
        result = train(
            params,
            kind,
            train_data,
            val_data,
            work_dir,
            teacher_path,
            resume="unfinished",
            callbacks=[MlflowCallback()],
            progress=progress,
            world=world,
        )
        with atomic_path(layout.checkpoint(kind)) as tmp:
            shutil.copyfile(result.best_path, tmp)
        model, _ = load_trained(layout.checkpoint(kind))
        example = _example_batch(load_split(val_data), params.data.image_size)
        info = log_torch_model(model, example, kind=kind, preset=params.model.preset)
        best = result.history[result.best_epoch]
        summary = {
            "best_epoch": result.best_epoch + 1,
            "epochs": len(result.history),
            "max_epochs": section_params.epochs,
            "patience": section_params.patience,
            # Stopped by the cap, not by early stopping: the network may still have been improving.
            "hit_max_epochs": section_params.hit_max(result.best_epoch),
            **{key: best[key] for key in best if key.startswith("val_")},
        }
        write_json(layout.stage_summary(kind), summary)
        _write_learning_curve(layout.reports / "plots" / "learning" / f"{kind}.csv", result.history)
        write_json(layout.logged_model(kind), {"run_id": run.info.run_id, "model_uri": info.model_uri})
    shutil.rmtree(work_dir)  # finished: nothing left to resume
    print(
        f"{kind}: best val macro-F1 {result.best_score:.3f} (epoch {result.best_epoch + 1}), "
        f"MLflow run {run.info.run_id}"
    )
    return summary


def log_torch_model(model: nn.Module, example: np.ndarray, **tags: str) -> ModelInfo:
    """Log an eval-mode model (MLflow's torch.export format) with its signature and input example.

    `example` must hold 2 or more images so the exported batch axis stays dynamic.
    """
    import torch
    from mlflow.models import infer_signature

    model = model.eval()
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    return mlflow.pytorch.log_model(
        model,
        name="model",
        signature=infer_signature(example, output),
        input_example=example,
        pip_requirements=pip_requirements(),
        tags=tags or None,
    )
