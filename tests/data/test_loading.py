"""Training-side API: split caches -> transforms -> DataLoader; the synthetic generator; stage entries."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hdkd.data import DataError
from hdkd.data.arrays import SplitArrays, save_split
from hdkd.data.loading import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArrayDataset,
    eval_transform,
    load_split,
    make_loader,
    train_transform,
)
from hdkd.data.synthetic import BLOB, DOT, HAM_CLASSES, RING, STREAK, class_counts, draw_lesions, generate
from tests.helpers import REPO


@pytest.fixture
def arrays() -> SplitArrays:
    rng = np.random.default_rng(0)
    return SplitArrays(rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8), np.arange(10) % 3, ["a", "b", "c"])


def test_load_split_roundtrip(tmp_path, arrays):
    save_split(tmp_path / "x.npz", arrays.images, arrays.labels, arrays.classes, np.array([str(i) for i in range(10)]))
    loaded = load_split(tmp_path / "x.npz")
    assert np.array_equal(loaded.images, arrays.images) and loaded.labels.dtype == np.int64
    assert loaded.classes == ["a", "b", "c"] and len(loaded) == 10
    with pytest.raises(DataError, match=r"nope.npz: not found"):
        load_split(tmp_path / "nope.npz")


def test_eval_transform_is_resize_and_imagenet_normalisation(arrays):
    image = torch.from_numpy(arrays.images[0]).permute(2, 0, 1)
    out = eval_transform(16)(image)
    manual = (image.float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[
        :, None, None
    ]
    assert out.dtype == torch.float32 and torch.allclose(out, manual, atol=1e-6)
    assert eval_transform(32)(image).shape == (3, 32, 32)


def test_train_transform_augments_images_and_batches(arrays):
    torch.manual_seed(0)
    image = torch.from_numpy(arrays.images[0]).permute(2, 0, 1)
    transform = train_transform(24)
    outs = [transform(image) for _ in range(3)]
    assert all(o.shape == (3, 24, 24) and o.dtype == torch.float32 for o in outs)
    assert not torch.allclose(outs[0], outs[1])
    batch = transform(torch.from_numpy(arrays.images).permute(0, 3, 1, 2))
    assert batch.shape == (10, 3, 24, 24) and not torch.allclose(batch[0], batch[1])
    names = [type(t).__name__ for t in transform.transforms]
    assert names == ["Resize", "ToDtype", "RandomBatchAugment", "Normalize"]


def test_dataset_and_loader(arrays):
    x, y = ArrayDataset(arrays)[4]
    assert type(x) is torch.Tensor and x.dtype == torch.uint8 and x.shape == (3, 16, 16) and y == 1

    generator = torch.Generator()

    def order() -> list[int]:
        generator.manual_seed(5)
        loader = make_loader(arrays, train=True, image_size=16, batch_size=4, generator=generator)
        return [int(v) for _, labels in loader for v in labels]

    first = order()
    assert len(first) == 10 and first == order()  # every sample (drop_last False), seeded order
    loader = make_loader(arrays, train=False, image_size=16, batch_size=4)
    batches = list(loader)
    assert [int(v) for _, labels in batches for v in labels] == arrays.labels.tolist()
    # The eval batches are the eval transform of each image.
    expected = eval_transform(16)(torch.from_numpy(arrays.images[:4]).permute(0, 3, 1, 2))
    assert batches[0][0].dtype == torch.float32 and torch.equal(batches[0][0], expected)
    sampler = list(range(9, -1, -1))
    loader = make_loader(arrays, train=True, image_size=16, batch_size=5, sampler=sampler)
    assert [int(v) for _, labels in loader for v in labels] == arrays.labels[::-1].tolist()

    # With workers, a seeded epoch is the same epoch.
    def epoch(workers: int) -> torch.Tensor:
        torch.manual_seed(7)
        loader = make_loader(arrays, train=True, image_size=16, batch_size=5, num_workers=workers)
        return torch.cat([images for images, _ in loader])

    assert torch.equal(epoch(1), epoch(1)) and torch.equal(epoch(0), epoch(0))


def test_synthetic_is_deterministic_and_ham_like():
    a, b = generate(120, 16, seed=1), generate(120, 16, seed=1)
    assert np.array_equal(a.images, b.images) and a.labels == b.labels and a.groups == b.groups
    assert not np.array_equal(a.images, generate(120, 16, seed=2).images)
    counts = class_counts(700)
    assert sum(counts.values()) == 700 and list(counts) == list(HAM_CLASSES)
    assert 0.45 < counts["nv"] / 700 < 0.55 and min(counts.values()) >= 700 // 14
    assert [a.labels.count(c) for c in HAM_CLASSES] == list(class_counts(120).values())
    # Some lesions have several views; views of one lesion share a label but not their pixels.
    views = {}
    for i, group in enumerate(a.groups):
        views.setdefault(group, []).append(i)
    shared = [ix for ix in views.values() if len(ix) > 1]
    assert shared and all(len({a.labels[i] for i in ix}) == 1 for ix in shared)
    assert not np.array_equal(a.images[shared[0][0]], a.images[shared[0][1]])


def test_synthetic_structure_shapes_decide_the_class():
    """A ring, a Y, a V, an X, lacunae, a network, a pale centre: one kind per class, V/Y/X alike but for
    the number of arms meeting at their one vertex (same total length); nv and df alone have a network."""
    cls = np.repeat(np.arange(len(HAM_CLASSES)), 200)
    lesions = draw_lesions(cls, np.random.default_rng(0))
    own = lesions["amp"] > 0.5  # another class's weaker copy stays below 0.35
    for i, name in enumerate(HAM_CLASSES):
        pick = cls == i
        kinds = set(lesions["kind"][pick][own[pick]].tolist())
        expected = {"akiec": {RING}, "vasc": {BLOB}, "nv": {DOT}, "df": set()}.get(name, {STREAK})
        assert kinds == expected, name
        assert (lesions["net"][pick] > 0.5).all() == (lesions["net"][pick] > 0.5).any() == (name in ("nv", "df"))
        assert (lesions["pale"][pick] > 0.9).all() == (lesions["pale"][pick] > 0.9).any() == (name == "df")
    for name, arms in (("bkl", 2), ("bcc", 3), ("mel", 4)):
        pick = cls == HAM_CLASSES.index(name)
        assert (own[pick].sum(1) == arms).all(), name
        for key in ("rel", "ang"):  # the arms meet at one point
            at = lesions[key][pick][:, :arms]
            assert np.allclose(at, at[:, :1]), (name, key)
        assert np.allclose(lesions["stretch"][pick][:, :arms] * arms, 4.0), name  # the same total arm length


def test_synthetic_colour_and_size_are_drawn_alike_for_every_class():
    cls = np.repeat(np.arange(len(HAM_CLASSES)), 300)
    lesions = draw_lesions(cls, np.random.default_rng(0))
    for i, name in enumerate(HAM_CLASSES):
        pick = cls == i
        assert len(np.unique(lesions["colour"][pick], axis=0)) == 5, name  # every class shows every colour
        assert lesions["radius"][pick].min() >= 0.55 and lesions["radius"][pick].max() <= 0.85, name
        assert abs(lesions["radius"][pick].mean() - 0.7) < 0.02, name
    # No class is told by its mean pixel colour: vascular lesions are not redder than nevi on average.
    data = generate(700, 16, seed=0)
    labels = np.array(data.labels)
    centre = data.images[:, 4:12, 4:12].reshape(700, -1, 3).mean(1)
    red_minus_green = {c: float((centre[labels == c, 0] - centre[labels == c, 1]).mean()) for c in HAM_CLASSES}
    assert abs(red_minus_green["vasc"] - red_minus_green["nv"]) < 15


def test_stage_entry_prints_one_clear_error(tmp_path):
    (tmp_path / "params.yaml").write_text(f"data:\n  source: imagefolder\n  path: {tmp_path / 'missing'}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.ingest"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {tmp_path / 'missing'}: not found (data.path for data.source 'imagefolder')"
    assert not (tmp_path / "data" / "raw").exists()
