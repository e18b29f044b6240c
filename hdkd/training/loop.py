"""One training loop for the teacher, the plain student and the distilled student (HDKD or Hinton's KD).

A distillation step is one teacher forward (eval mode, no grad) and one student forward and backward;
both networks return their stage maps from the same pass that makes the logits.

Convergence: a run trains at most `epochs` epochs and stops early once validation macro-F1 has not improved
for `patience` epochs; `best.pt` is the best epoch's either way.

Memory format: networks and batches are channels_last (NHWC), as timm's `--channels-last`. PyTorch's CPU
kernels for these networks are faster in it (benchmarks/train_step.py, 2-core AVX-512 EPYC, 1-min load
0.5-1.9): a student step 1.26-1.35x at the tiny preset (batch 32, 1 thread), 1.22-1.41x at small, 1.25-1.30x
at paper (batch 16, 2 threads); an epoch on the digits 1.31x. NCHW max-pooling alone ran 9x slower on the tiny
maps. Float rounding differs from NCHW's, and over a run that moves the trained weights as far as another seed
would; the same seed still gives the same weights.

Reproducibility: every epoch starts by seeding python, numpy and torch from `(seed, epoch)`,
so the shuffle, the augmentation and dropout of an epoch depend on nothing else. A run resumed
from its last checkpoint therefore reaches the same weights as one that never stopped. `last.pt`
records the run's identity (seed, settings, model, world size and whatever the caller adds, such
as data hashes), and only a run with the same identity continues it.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from hdkd.config import DistillParams, TrainParams
from hdkd.memory import keep_freed_memory
from hdkd.models.fuse import prepare_teacher
from hdkd.training.callbacks import Callback, FitResult
from hdkd.training.checkpoint import (
    CheckpointError,
    ModelMeta,
    best_meta,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from hdkd.training.distributed import SINGLE, World, all_reduce_sum, sync_buffers
from hdkd.training.losses import HDKDLoss, HintonKDLoss
from hdkd.training.metrics import classification_metrics
from hdkd.training.optimizer import build_optimizer

SELECTION_METRIC = "macro_f1"  # imbalanced medical classes: accuracy would reward predicting `nv`

# True: continue `last.pt`, failing if it is another run's (an explicit request). "unfinished": continue
# it only if it is an unfinished run of this very job, else say why and train from scratch (a stage rerun).
Resume = bool | Literal["unfinished"]

# What a differing identity entry means, said after the checkpoint's path.
_MISMATCH = {
    "seed": "was written with other training settings or seed",
    "train_params": "was written with other training settings or seed",
    "meta": "is for another model (kind, preset, block, image size or classes)",
    "world_size": "is from a run with another number of processes",
    "data": "is from other data",
    "teacher": "was distilled from another teacher",
}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """A batch of images in the memory format the networks train and predict in (see the module's docstring)."""
    return images.contiguous(memory_format=torch.channels_last)


def _logits_for_prediction(output: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return (output[0] + output[1]) / 2 if isinstance(output, tuple) else output


@torch.no_grad()
def predict_proba(
    model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and true labels over a loader, in eval mode."""
    keep_freed_memory()
    model.eval()
    probs, labels = [], []
    for images, targets in loader:
        logits = _logits_for_prediction(model(channels_last(images.to(device))))
        probs.append(logits.float().softmax(dim=1).cpu())
        labels.append(targets)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def validation_metrics(
    model: nn.Module, loader: DataLoader, class_names: Sequence[str], device: torch.device | str = "cpu"
) -> dict[str, Any]:
    probs, labels = predict_proba(model, loader, device)
    return classification_metrics(probs, labels, class_names)


class Trainer:
    """Trains `model` of `kind` (`teacher`, `student` or `distilled`) with checkpoints in `out_dir`.

    `last.pt` (every epoch) holds model, optimizer, scheduler, epoch, history and the run's identity;
    `best.pt` holds the weights of the epoch with the best validation macro-F1, never chosen on test.
    `identity` adds to seed, settings, model meta and world size what else makes this run this run
    (e.g. data hashes): `last.pt` of another identity is never continued.
    """

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        params: TrainParams,
        out_dir: str | Path,
        seed: int,
        class_names: Sequence[str],
        teacher: nn.Module | None = None,
        callbacks: Sequence[Callback] = (),
        meta: ModelMeta | None = None,
        device: torch.device | str = "cpu",
        progress: bool = True,
        world: World = SINGLE,
        identity: dict[str, Any] | None = None,
    ):
        keep_freed_memory()  # large activations: no page faults on every step (hdkd.memory)
        self.distill_loss: HDKDLoss | HintonKDLoss | None = None
        if kind == "distilled":
            if teacher is None:
                raise ValueError("distillation needs a trained teacher")
            if not isinstance(params, DistillParams):
                raise TypeError("distillation needs DistillParams (alpha, temperature, ...)")
            self.distill_loss = (
                HintonKDLoss(params.alpha, params.temperature, params.kind)
                if params.method == "vanilla_kd"
                else HDKDLoss(
                    params.alpha,
                    params.temperature,
                    params.kind,
                    params.lambda_feat,
                    params.beta,
                    params.stages,
                    params.kl_scale,
                )
            )
            teacher = prepare_teacher(teacher, params.teacher_dtype, device)  # eval, no grad, BN folded
        self.kind, self.params, self.teacher, self.world = kind, params, teacher, world
        self.device = torch.device(device)
        # `net` is the network itself (saved, evaluated); `model` is what trains: DDP-wrapped when distributed.
        self.net: nn.Module = model.to(self.device).to(memory_format=torch.channels_last)
        self.model: nn.Module = model
        if world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=ids)
        self.out_dir = Path(out_dir)
        self.seed, self.class_names = seed, list(class_names)
        # Only one process tracks and writes; the others train their shard.
        self.callbacks = list(callbacks) if world.is_main else []
        self.meta: ModelMeta | None = meta
        self.progress = progress and world.is_main
        self.optimizer, self.scheduler = build_optimizer(model, params)
        self.best_path, self.last_path = self.out_dir / "best.pt", self.out_dir / "last.pt"
        self.identity: dict[str, Any] = {
            "seed": seed,
            "train_params": params.model_dump(),
            "meta": self.meta or {},
            "world_size": world.size,  # the sampler shards epochs by world size: another size, other weights
            **(identity or {}),
        }

    def _loss(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if self.distill_loss is None:
            logits = self.model(images)
            return F.cross_entropy(_logits_for_prediction(logits), labels), logits, {}
        assert self.teacher is not None
        with torch.no_grad():
            teacher_logits, teacher_features = self.teacher(images, return_features=True)
        student_logits, student_features = self.model(images, return_features=True)
        if isinstance(self.distill_loss, HintonKDLoss):
            loss, parts = self.distill_loss(student_logits, teacher_logits, labels)
        else:
            loss, parts = self.distill_loss(student_logits, student_features, teacher_logits, teacher_features, labels)
        return loss, _logits_for_prediction(student_logits), parts

    def step(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One optimisation step; returns the detached loss, prediction logits and loss parts."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.params.bf16):
            loss, logits, parts = self._loss(images, labels)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{self.kind}: loss became {loss.item()}; lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach(), parts

    def train_epoch(self, loader: DataLoader, epoch: int) -> dict[str, float]:
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        seen = correct = 0
        bar = tqdm(
            loader,
            desc=f"{self.kind} epoch {epoch + 1}/{self.params.epochs}",
            leave=False,
            # A live bar only on a terminal: in a log file it is dozens of carriage-return updates per epoch.
            disable=not (self.progress and sys.stderr.isatty()),
        )
        for images, labels in bar:
            images, labels = channels_last(images.to(self.device)), labels.to(self.device)
            loss, logits, parts = self.step(images, labels)
            batch = labels.numel()
            for name, value in {"loss": loss, **parts}.items():
                sums[name] = sums.get(name, 0) + value.float() * batch
            seen += batch
            correct += int((logits.argmax(1) == labels).sum())
            bar.set_postfix(loss=f"{sums['loss'].item() / seen:.3f}", acc=f"{correct / seen:.3f}")
        sync_buffers(self.net)
        names = sorted(sums)
        counts = torch.tensor([float(seen), float(correct)], device=self.device)
        totals = all_reduce_sum(torch.cat([torch.stack([sums[n].float() for n in names]), counts])).tolist()
        seen_all, correct_all = totals[-2], totals[-1]
        stats = {f"train_{name}": total / seen_all for name, total in zip(names, totals, strict=False)}
        stats["train_accuracy"] = correct_all / seen_all
        return stats

    def _save_last(self, epoch: int, best_epoch: int, best_score: float, history: list[dict[str, float]]) -> None:
        save_checkpoint(
            self.last_path,
            {
                "model": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
                "epoch": epoch,
                "best_epoch": best_epoch,
                "best_score": best_score,
                "history": history,
                "identity": self.identity,
                "meta": self.meta or {},
            },
        )

    def _not_resumable(self, state: dict[str, Any], strict: bool) -> str | None:
        """Why the loaded `last.pt` cannot be continued by this run (said after its path), or None."""
        saved = state.get("identity")
        if not isinstance(saved, dict):
            return "has no run identity (written by an older hdkd)"
        for key in {**self.identity, **saved}:
            if saved.get(key) != self.identity.get(key):
                return _MISMATCH.get(key, f"differs in {key!r}")
        if not strict and self.params.stops_after(state["epoch"], state["best_epoch"]):
            # DVC reruns a finished stage only because something changed: train afresh.
            return "is from a finished run"
        if not self.best_path.is_file():
            return f"has no {self.best_path.name} beside it"
        return None

    def _resume(self, strict: bool) -> tuple[int, int, float, list[dict[str, float]]] | None:
        """Restore `last.pt` into model, optimizer and scheduler: (next epoch, best epoch, best score,
        history). If it cannot be continued: raise when `strict`, else say why and return None."""
        try:
            state = load_checkpoint(self.last_path)
            reason = self._not_resumable(state, strict)
        except CheckpointError as error:
            if strict:
                raise
            reason = f"cannot be read ({error})"
        if reason is not None:
            if strict:
                raise CheckpointError(f"{self.last_path} {reason}; delete it or run without resume")
            if self.world.is_main:
                print(f"{self.kind}: {self.last_path} {reason}; training from scratch")
            return None
        load_model_state(self.net, state["model"], self.last_path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        return state["epoch"] + 1, state["best_epoch"], state["best_score"], state["history"]

    def fit(self, train_loader: DataLoader, val_loader: DataLoader, resume: Resume = False) -> FitResult:
        """Train until `params.epochs` or early stopping (`params.patience`); `resume` (see `Resume`) continues
        from `last.pt` if there is one."""
        if self.teacher is not None:
            self.teacher.to(self.device)
        history: list[dict[str, float]] = []
        start, best_epoch, best_score = 0, -1, -math.inf
        restored = self._resume(strict=resume is True) if resume and self.last_path.is_file() else None
        if restored is not None:
            start, best_epoch, best_score, history = restored
            if self.world.is_main:
                print(f"{self.kind}: resuming at epoch {start + 1}/{self.params.epochs} from {self.last_path}")
            for callback in self.callbacks:
                callback.on_resume(history)
        for epoch in range(start, self.params.epochs):
            # Early stopping, checked here so a resumed run that had converged trains nothing more. Every rank
            # validates the same weights on the whole validation split, so all of them stop together.
            if epoch > 0 and self.params.converged(epoch - 1, best_epoch):
                if self.progress:
                    print(
                        f"{self.kind}: stopped after epoch {epoch}/{self.params.epochs}: no better validation "
                        f"macro-F1 for {self.params.patience} epochs (best {best_score:.3f} at epoch {best_epoch + 1})"
                    )
                break
            # Ranks differ in augmentation; DistributedSampler shards the shuffled epoch.
            seed_everything(self.seed * 1000 + epoch + 7919 * self.world.rank)
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(epoch)
            began = time.perf_counter()
            stats = self.train_epoch(train_loader, epoch)
            val = validation_metrics(self.net, val_loader, self.class_names, self.device)
            stats.update({f"val_{k}": v for k, v in val.items() if isinstance(v, float)})
            stats["lr"] = self.optimizer.param_groups[0]["lr"]
            stats["epoch_seconds"] = time.perf_counter() - began
            if self.scheduler is not None:
                self.scheduler.step(epoch + 1)
            history.append(stats)
            score = stats[f"val_{SELECTION_METRIC}"]
            if score > best_score:
                best_epoch, best_score = epoch, score
                if self.world.is_main:
                    best: dict[str, Any] = {"model": self.net.state_dict()}
                    if self.meta is not None:
                        best["meta"] = best_meta(self.meta, epoch, score)
                    save_checkpoint(self.best_path, best)
            if self.world.is_main:
                self._save_last(epoch, best_epoch, best_score, history)
            if self.progress:
                tqdm.write(
                    f"{self.kind} epoch {epoch + 1}/{self.params.epochs}: loss {stats['train_loss']:.3f} "
                    f"acc {stats['train_accuracy']:.3f} | val acc {stats['val_accuracy']:.3f} "
                    f"macro-F1 {score:.3f} | {stats['epoch_seconds']:.1f}s",
                    file=sys.stdout,
                )
                sys.stdout.flush()
            for callback in self.callbacks:
                callback.on_epoch_end(epoch, stats)
        result = FitResult(best_epoch, best_score, self.best_path, self.last_path, self.net, history)
        for callback in self.callbacks:
            callback.on_fit_end(result)
        return result
