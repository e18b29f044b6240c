"""Safe checkpoint files: tensors and plain values only, loaded with `weights_only=True`,
matched key for key against the model."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import torch
from torch import nn

from hdkd.errors import HDKDError
from hdkd.files import atomic_path
from hdkd.models import build_model


class CheckpointError(HDKDError, ValueError):
    """A checkpoint that cannot be trusted or does not fit the model."""


class ModelMeta(TypedDict):
    """A checkpoint's `meta`: what rebuilds its network without params.yaml (the one schema, written by the
    training stage and the loop, read here)."""

    kind: str
    preset: str
    block: str
    img_size: int
    classes: list[str]
    predict_heads: NotRequired[str]  # HDKD only: "both" (mean of the heads) or "class"
    distillation_token: NotRequired[bool]  # distilled only: False for Hinton's KD (the plain student network)
    epoch: NotRequired[int]  # best.pt only: the 0-based epoch it was saved at
    val_macro_f1: NotRequired[float]  # best.pt only: its validation score


# ModelMeta's required keys; not `__required_keys__`, which postponed annotations leave without NotRequired.
REQUIRED_META = frozenset({"kind", "preset", "block", "img_size", "classes"})


def best_meta(meta: ModelMeta, epoch: int, val_macro_f1: float) -> ModelMeta:
    """The `meta` of a best.pt: the model's, plus when it was saved and its validation score."""
    return {**meta, "epoch": epoch, "val_macro_f1": val_macro_f1}


_REMEDY = "use a best.pt or last.pt written by `hdkd train` or the training stages"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically: a kill during the write leaves the previous file intact. The same payload always gives
    the same bytes, so the registry can tell a retrained but identical model by its sha256: saved to a path,
    torch.save names the archive inside after the file, here a temporary name that differs every time."""
    with atomic_path(path) as tmp, tmp.open("wb") as file:
        torch.save(payload, file)


def _unsafe_globals(path: Path) -> str:
    """What a refused checkpoint would call on load, read statically from its pickle (nothing is run)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, pickle.UnpicklingError):
        names = []
    return ", ".join(names) or "objects other than tensors and plain values"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    # torch.save (and so save_checkpoint) writes a zip archive: anything else is damaged or another format,
    # refused before torch's legacy loader guesses at it (a text file made it raise a bare KeyError).
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (empty, truncated or another format); {_REMEDY}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused to load: it holds {_unsafe_globals(path)}, which weights_only=True loading never "
            "runs; only load checkpoints you trust"
        ) from None
    except (RuntimeError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason}); {_REMEDY}") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{path}: not an HDKD checkpoint (no 'model' entry); {_REMEDY}")
    return payload


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Strict load with a message that names the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    misshaped = [
        f"{key} {tuple(state[key].shape)} vs model {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(state))
        if state[key].shape != own[key].shape
    ]
    if missing or extra or misshaped:
        details = []
        if missing:
            details.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            details.append(f"unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        if misshaped:
            details.append(f"shape mismatch {misshaped[:3]}")
        raise CheckpointError(
            f"{source}: checkpoint does not match the model ({'; '.join(details)}); "
            "was it written for another preset, model kind or class count?"
        )
    model.load_state_dict(state, strict=True)


def build_from_meta(meta: ModelMeta) -> nn.Module:
    extra: dict[str, Any] = {"predict_heads": meta["predict_heads"]} if "predict_heads" in meta else {}
    if "distillation_token" in meta:
        extra["distilled"] = meta["distillation_token"]
    return build_model(
        meta["kind"],
        meta["preset"],
        num_classes=len(meta["classes"]),
        block=meta["block"],
        img_size=meta["img_size"],
        **extra,
    )


def load_trained(path: str | Path) -> tuple[nn.Module, ModelMeta]:
    """Rebuild a network from a `best.pt`/`last.pt` and load its weights strictly, in eval mode."""
    state = load_checkpoint(path)
    meta: ModelMeta = state.get("meta") or {}  # type: ignore[assignment]  # checked just below
    if not set(meta) >= REQUIRED_META:
        raise CheckpointError(f"{path}: checkpoint has no model description ('meta'); was it written by hdkd?")
    model = build_from_meta(meta)
    load_model_state(model, state["model"], path)
    return model.eval(), meta
