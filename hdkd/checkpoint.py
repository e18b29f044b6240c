"""Safe checkpoint files: tensors and plain values only, loaded with `weights_only=True`,
matched key for key against the model."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hdkd.errors import HDKDError
from hdkd.io import atomic_path


class CheckpointError(HDKDError, ValueError):
    """A checkpoint that cannot be trusted or does not fit the model."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically: a kill during the write leaves the previous file intact."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain values "
            f"(weights_only=True). Only load checkpoints you trust. Detail: {str(error).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError) as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{path}: not an HDKD checkpoint (no 'model' entry)")
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
