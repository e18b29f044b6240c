import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(2)


def toy_images(n: int, num_classes: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable but noisy RGB images: each class is a colour and a blob position."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = rng.normal(0.45, 0.12, (n, size, size, 3))
    for i, label in enumerate(labels):
        angle = 2 * np.pi * label / num_classes
        cy, cx = 0.5 + 0.25 * np.sin(angle), 0.5 + 0.25 * np.cos(angle)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
        colour = np.roll([0.5, 0.1, -0.2], label)
        images[i] += blob[..., None] * colour
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels.astype(np.int64)


def toy_loader(
    n: int, num_classes: int, size: int = 32, seed: int = 0, batch_size: int = 16, shuffle: bool = True
) -> DataLoader:
    images, labels = toy_images(n, num_classes, size, seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - 0.45) / 0.25
    return DataLoader(TensorDataset(x, torch.from_numpy(labels)), batch_size=batch_size, shuffle=shuffle)


@pytest.fixture
def toy_loaders():
    return toy_loader(192, 3, seed=0), toy_loader(96, 3, seed=1, shuffle=False)


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory):
    """A tiny copy of the repository after one real `dvc repro` (shared: the chain is the slow part)."""
    from tests.repo import make_repo, run

    repo = make_repo(tmp_path_factory.mktemp("repo"))
    first = run(["dvc", "repro"], repo)
    (repo / "first_repro.log").write_text(first.stdout + first.stderr)
    return repo
