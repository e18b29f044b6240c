"""Synthetic dermoscopy-like images in the 7 HAM-10000 classes: the embedded default data set.

This is not real data. Each class is a recipe of lesion shape, colour and texture (melanoma:
large, irregular, multi-coloured; dermatofibroma: small with a pale centre; vascular: red
lacunae; ...). Every lesion draws its recipe with noise and is blended towards a random other
class, so classes overlap; every view of a lesion adds rotation, lighting, hair and sensor noise.
A lesion has 1-3 views sharing one lesion id, as in HAM-10000, so grouped splitting matters.
Rendering is vectorised numpy at the target size: 700 images at 32 px take well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HAM_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
# Image counts of the real HAM-10000 (10 015 images): the imbalance we imitate.
HAM_COUNTS = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}

# Per-class recipe, one row per class in HAM_CLASSES order. Columns:
# radius, irregularity, edge softness, colour r g b, then texture amounts:
# blotches, ridges, vessels, roughness, pale centre, lacunae, network, dark centre.
_RECIPES = np.array(
    [
        # rad  irr   edge  r     g     b     blot ridge vess rough pale lacu net  dark
        [0.46, 0.14, 0.14, 0.74, 0.42, 0.38, 0.05, 0.05, 0.15, 0.75, 0.05, 0.00, 0.00, 0.05],  # akiec
        [0.42, 0.10, 0.08, 0.76, 0.54, 0.52, 0.10, 0.00, 0.70, 0.10, 0.15, 0.05, 0.00, 0.00],  # bcc
        [0.50, 0.11, 0.05, 0.60, 0.45, 0.31, 0.05, 0.70, 0.00, 0.20, 0.00, 0.00, 0.10, 0.05],  # bkl
        [0.30, 0.05, 0.10, 0.52, 0.35, 0.27, 0.00, 0.00, 0.00, 0.10, 0.75, 0.00, 0.15, 0.00],  # df
        [0.58, 0.20, 0.06, 0.32, 0.20, 0.16, 0.75, 0.10, 0.05, 0.05, 0.00, 0.05, 0.15, 0.30],  # mel
        [0.44, 0.05, 0.04, 0.46, 0.30, 0.20, 0.05, 0.00, 0.00, 0.00, 0.00, 0.00, 0.35, 0.35],  # nv
        [0.35, 0.06, 0.03, 0.62, 0.18, 0.27, 0.00, 0.00, 0.10, 0.00, 0.00, 0.80, 0.00, 0.00],  # vasc
    ],
    dtype=np.float32,
)
# Per-lesion spread of each recipe column (same order).
_SPREAD = np.array([0.08, 0.05, 0.04, 0.07, 0.06, 0.06, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.15, 0.15], dtype=np.float32)
_BLEND_MAX = 0.45  # how far a lesion may be pulled towards another class's recipe
_VIEWS_PER_LESION = (1, 2, 3)
_VIEWS_P = (0.72, 0.18, 0.10)
_WAVES = 4  # plane waves per smooth noise field
_BLOBS = 5  # lacunae per lesion
_HAIRS = 3  # candidate hairs per view


@dataclass(frozen=True)
class SyntheticSet:
    images: np.ndarray  # uint8 (N, S, S, 3)
    labels: list[str]
    groups: list[str]  # lesion ids; views of one lesion share it


def class_counts(n: int) -> dict[str, int]:
    """HAM-10000 proportions scaled to `n` images, every class with at least n // 14 of them, so that a
    test split of a fifth holds some twenty images of the rarest class (nv stays the largest, about half)."""
    total = sum(HAM_COUNTS.values())
    floor = n // 14
    counts = {c: max(floor, round(HAM_COUNTS[c] * n / total)) for c in HAM_CLASSES if c != "nv"}
    counts["nv"] = n - sum(counts.values())
    return {c: counts[c] for c in HAM_CLASSES}


def generate(n: int, size: int, seed: int) -> SyntheticSet:
    """`n` images of `size` x `size` px; the same arguments always give the same bytes."""
    rng = np.random.default_rng(seed)
    labels: list[str] = []
    lesion_of_image: list[int] = []
    lesion_class: list[int] = []
    counts = class_counts(n)
    for ci, name in enumerate(HAM_CLASSES):
        need = counts[name]
        while need > 0:
            count = min(need, int(rng.choice(_VIEWS_PER_LESION, p=_VIEWS_P)))
            lesion_of_image += [len(lesion_class)] * count
            lesion_class.append(ci)
            labels += [name] * count
            need -= count
    lesions = _draw_lesions(np.array(lesion_class), rng)
    views = _draw_views(np.array(lesion_of_image), lesions, size, rng)

    images = np.empty((n, size, size, 3), dtype=np.uint8)
    chunk = max(1, (1 << 18) // (size * size))  # bounds the float32 temporaries at any size
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        # Per-image pixel noise (3 sensor channels + 1 for texture roughness), seeded by index
        # so the bytes do not depend on the chunking.
        noise = np.stack(
            [
                np.random.default_rng([seed, i]).standard_normal((size, size, 4), dtype=np.float32)
                for i in range(start, stop)
            ]
        )
        images[start:stop] = _render({k: v[start:stop] for k, v in views.items()}, size, noise)
    groups = [f"lesion_{i:05d}" for i in lesion_of_image]
    return SyntheticSet(images=images, labels=labels, groups=groups)


def _draw_lesions(cls: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    m = len(cls)
    other = (cls + rng.integers(1, len(HAM_CLASSES), size=m)) % len(HAM_CLASSES)
    blend = (_BLEND_MAX * rng.random(m, dtype=np.float32) ** 2)[:, None]
    recipe = (1 - blend) * _RECIPES[cls] + blend * _RECIPES[other]
    recipe = recipe + _SPREAD * rng.standard_normal(recipe.shape, dtype=np.float32)
    recipe[:, 0] = np.clip(recipe[:, 0], 0.18, 0.8)
    recipe[:, 1:3] = np.clip(recipe[:, 1:3], 0.01, None)
    recipe[:, 3:] = np.clip(recipe[:, 3:], 0.0, 1.0)
    harmonics = rng.standard_normal((m, 4), dtype=np.float32)
    return {
        "recipe": recipe,
        "harm_amp": harmonics / np.linalg.norm(harmonics, axis=1, keepdims=True),
        "harm_phase": rng.uniform(0, 2 * np.pi, (m, 4)).astype(np.float32),
        "aspect": rng.uniform(1.0, 1.4, m).astype(np.float32),
        "angle": rng.uniform(0, 2 * np.pi, m).astype(np.float32),
        # Plane waves (kx, ky, phase) of the lesion's noise fields, in lesion coordinates so
        # that every view of the lesion shows the same pattern.
        "waves": np.concatenate(
            [rng.normal(0, 7, (m, 4, _WAVES, 2)), rng.uniform(0, 2 * np.pi, (m, 4, _WAVES, 1))], axis=-1
        ).astype(np.float32),
        "blobs": (rng.uniform(-0.6, 0.6, (m, _BLOBS, 2))).astype(np.float32),
        "blot_dark": rng.random(m, dtype=np.float32),  # blue-grey (0) to black (1) blotches
        "skin": (np.array([0.86, 0.68, 0.58], np.float32) + rng.normal(0, 0.05, (m, 3))).astype(np.float32),
    }


def _draw_views(
    lesion: np.ndarray, lesions: dict[str, np.ndarray], size: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    n = len(lesion)
    views = {k: v[lesion] for k, v in lesions.items()}
    views["angle"] = views["angle"] + rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    views["centre"] = rng.normal(0, 0.1, (n, 2)).astype(np.float32)
    views["scale"] = rng.uniform(0.92, 1.08, n).astype(np.float32)
    views["light"] = rng.normal(1.0, 0.05, (n, 3)).astype(np.float32)
    views["gradient"] = rng.normal(0, 0.08, (n, 2)).astype(np.float32)
    views["vignette"] = rng.uniform(0, 0.9, n).astype(np.float32)
    views["hair_line"] = np.concatenate(
        [rng.uniform(0, np.pi, (n, _HAIRS, 1)), rng.uniform(-1, 1, (n, _HAIRS, 1))], axis=-1
    ).astype(np.float32)
    views["hair_on"] = (rng.random((n, _HAIRS)) < 0.3).astype(np.float32)
    views["hair_width"] = np.full(n, max(1.4 / size, 0.012), np.float32)
    views["noise"] = rng.uniform(0.015, 0.05, n).astype(np.float32)
    return views


def _col(a: np.ndarray) -> np.ndarray:
    """Per-image scalars (n,) -> (n, 1, 1) to broadcast over pixels."""
    return a[:, None, None]


def _field(x: np.ndarray, y: np.ndarray, waves: np.ndarray) -> np.ndarray:
    """Smooth noise of about unit variance: a sum of random plane waves (n, J, 3)."""
    out = np.zeros_like(x)
    for j in range(waves.shape[1]):
        kx, ky, ph = (_col(waves[:, j, i]) for i in range(3))
        out += np.sin(kx * x + ky * y + ph)
    return out * np.float32(np.sqrt(2.0 / waves.shape[1]))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * z)  # no overflow for large |z|, unlike 1 / (1 + exp(-z))


def _mix(base: np.ndarray, colour, amount: np.ndarray) -> np.ndarray:
    """Blend `base` (n, S, S, 3) towards `colour` by `amount` (n, S, S)."""
    return base + amount[..., None] * (np.asarray(colour, np.float32) - base)


def _render(v: dict[str, np.ndarray], size: int, noise: np.ndarray) -> np.ndarray:
    r = v["recipe"]
    radius, irregular, edge = (_col(r[:, i]) for i in range(3))
    blot, ridge, vessel, rough, pale, lacunae, network, dark = (_col(r[:, i]) for i in range(6, 14))
    radius = radius * _col(v["scale"])

    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2 - 1
    u, w = axis[None, None, :], axis[None, :, None]  # image x (columns), y (rows)
    du, dw = u - _col(v["centre"][:, 0]), w - _col(v["centre"][:, 1])
    cos, sin = np.cos(_col(v["angle"])), np.sin(_col(v["angle"]))
    x = (du * cos + dw * sin) / _col(v["aspect"])  # lesion coordinates
    y = -du * sin + dw * cos
    rho, theta = np.hypot(x, y), np.arctan2(y, x)

    border = np.ones_like(theta)
    for k in range(4):  # harmonics 2..5 make the outline irregular
        border += irregular * _col(v["harm_amp"][:, k]) * np.cos((k + 2) * theta + _col(v["harm_phase"][:, k]))
    border *= radius
    mask = _sigmoid((border - rho) / (edge * radius))
    rel = rho / border  # 0 at the centre, 1 on the outline

    xs, ys = x / radius, y / radius  # texture scale follows the lesion
    waves = v["waves"]
    lesion = np.broadcast_to(r[:, None, None, 3:6], (*mask.shape, 3)).copy()
    bright = 1 - 0.4 * dark * np.exp(-((rel / 0.55) ** 2))
    bright -= 0.3 * network * (np.sin(9 * xs) * np.sin(9 * ys)) ** 2
    bright += 0.3 * ridge * np.sin(8 * xs + 2.5 * _field(xs, ys, waves[:, 0]))
    lesion *= bright[..., None]
    blot_colour = (
        np.array([0.35, 0.38, 0.5], np.float32) * (1 - v["blot_dark"][:, None])
        + np.array([0.08, 0.06, 0.06], np.float32) * v["blot_dark"][:, None]
    )
    blotches = blot * _sigmoid((_field(xs, ys, waves[:, 1]) - 0.4) / 0.15)
    lesion += blotches[..., None] * (blot_colour[:, None, None, :] - lesion)
    vessels = vessel * np.exp(-(np.sin(5 * xs + 2 * _field(xs, ys, waves[:, 2])) ** 2) / 0.03)
    lesion = _mix(lesion, (0.72, 0.08, 0.12), 0.8 * vessels)
    scales = rough * _sigmoid((_field(xs, ys, waves[:, 3]) - 0.8) / 0.1)
    lesion = _mix(lesion, (0.95, 0.92, 0.88), 0.7 * scales)
    lesion *= (1 + 0.15 * rough * noise[..., 3])[..., None]
    lesion = _mix(lesion, (0.93, 0.88, 0.84), pale * np.exp(-((rel / 0.45) ** 2)))
    blobs = np.zeros_like(rel)
    for b in range(v["blobs"].shape[1]):
        bx, by = _col(v["blobs"][:, b, 0]), _col(v["blobs"][:, b, 1])
        blobs += np.exp(-((xs - bx) ** 2 + (ys - by) ** 2) / (2 * 0.18**2))
    lesion = _mix(lesion, (0.42, 0.05, 0.2), lacunae * np.minimum(blobs, 1.0))

    skin = v["skin"][:, None, None, :] * (1 + 0.04 * _field(x, y, waves[:, 0] * 0.5))[..., None]
    img = skin + mask[..., None] * (lesion - skin)
    img *= v["light"][:, None, None, :]
    img *= (1 + _col(v["gradient"][:, 0]) * u + _col(v["gradient"][:, 1]) * w)[..., None]
    corner = np.clip((np.hypot(u, w) - 0.95) / 0.45, 0, 1)
    img *= (1 - _col(v["vignette"]) * corner)[..., None]
    for h in range(v["hair_line"].shape[1]):
        ang, off = _col(v["hair_line"][:, h, 0]), _col(v["hair_line"][:, h, 1])
        dist = u * np.sin(ang) - w * np.cos(ang) - off
        hair = _col(v["hair_on"][:, h]) * np.exp(-((dist / _col(v["hair_width"])) ** 2))
        img = _mix(img, (0.16, 0.11, 0.09), 0.85 * hair)
    img += v["noise"][:, None, None, None] * noise[..., :3]
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
