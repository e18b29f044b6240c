"""Synthetic dermoscopy-like images in the 7 HAM-10000 classes: the embedded default data set.

This is not real data. A lesion is a pigmented patch on skin; the *shape of its structures* decides
its class, loosely after dermoscopic structures:

- akiec: one ring (a follicle opening, the "strawberry" pattern), some 13 px across at 32 px;
- bcc: one branching vessel with 3 arms from one point (a Y);
- bkl: one fold of 2 arms from one point (a V);
- mel: one crossing of 4 arms (an X);
- vasc: 2-3 lacunae, filled discs some 10 px across;
- nv: a pigment network (a warped grid, cells some 8 px wide) with a few dots;
- df: a pale central patch, with the network only around it.

The V, Y and X have the same total arm length (24 px: as much ink) and differ only in how many arms
meet. The colour of the structures comes from one palette of five for every class: a lesion takes its
class's typical colour with probability 0.35, else a palette colour at random (so about half show the
typical one); the lesion's own tone follows only the structure colour (lighter under dark structures),
and size, outline and skin do not depend on the class. So colour gives the class away only in part,
size not at all, and a network has to tell shapes apart. Nuisance keeps it from being easy: a tenth
of the lesions carry a weaker, partial copy of another class's structures, any lesion may have a faint
pale patch, and every view of a lesion adds rotation, shift, scale, lighting, hair and sensor noise.
A lesion has 1-3 views sharing one lesion id, as in HAM-10000, so grouped splitting matters. Structure
sizes scale with the image (they are given in pixels of a 32 px image). Rendering is vectorised numpy
at the target size: 1600 images at 32 px take about a second.

What it gave with the default params.yaml (tiny preset, `make run`, seed 42), test macro-F1 with 95%
bootstrap intervals on 320 images: teacher 0.782 [0.721, 0.832], plain student 0.753 [0.693, 0.806], HDKD
0.739 [0.676, 0.788]; the teacher's lead of 0.029 lies within the intervals, so it is not established.
This design was chosen on validation point estimates (seeds 42 / 43: teacher 0.867 / 0.811, plain student
0.816 / 0.778), where the former colour-recipe generator had shown no lead at all; no network is near
perfect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HAM_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
# Image counts of the real HAM-10000 (10 015 images): the imbalance we imitate.
HAM_COUNTS = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}

_UNIT = 2 / 32  # one pixel of a 32 px image, in image units (the image spans [-1, 1])
# Structure kinds; columns: width (Gaussian sigma), ring radius, streak half-length, in _UNIT.
DOT, RING, STREAK, BLOB = range(4)
_KINDS = np.array([[1.8, 0, 0], [1.7, 6.5, 0], [1.7, 0, 3.0], [3.3, 0, 0]], np.float32) * _UNIT
_GAIN = np.array([1.3, 1.2, 1.2, 1.8], np.float32)  # >1 flattens a structure's top, sharpening its edge
_SLOTS = 12  # structures per lesion at most (a lesion fills a few; another class's copy may use the rest)
_PALETTE = np.array(
    [
        [0.22, 0.13, 0.08],  # dark brown
        [0.08, 0.06, 0.06],  # black
        [0.35, 0.38, 0.50],  # blue-grey
        [0.70, 0.10, 0.15],  # red
        [0.42, 0.05, 0.20],  # purple
    ],
    np.float32,
)
# Each class's typical structure colour (a _PALETTE row); a lesion shows it with probability _TYPICAL,
# else a palette colour drawn at random.
_CLASS_COLOUR = np.array([3, 2, 0, 0, 1, 0, 4])  # HAM_CLASSES order
_TYPICAL = 0.35
_SECOND_P, _SECOND_MAX = 0.1, 0.35  # share of lesions with another class's weaker structures; their top weight
_PALE_P = 0.3  # share of lesions of any class with a faint pale patch
_NET_PERIOD = 8 * _UNIT
_VIEWS_PER_LESION = (1, 2, 3)
_VIEWS_P = (0.72, 0.18, 0.10)
_WAVES = 4  # plane waves per smooth noise field
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
    lesions = draw_lesions(np.array(lesion_class), rng)
    views = _draw_views(np.array(lesion_of_image), lesions, size, rng)

    images = np.empty((n, size, size, 3), dtype=np.uint8)
    chunk = max(1, (1 << 16) // (size * size))  # bounds the float32 temporaries at any size
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        # Per-image sensor noise, seeded by index so the bytes do not depend on the chunking.
        noise = np.stack(
            [
                np.random.default_rng([seed, i]).standard_normal((size, size, 3), dtype=np.float32)
                for i in range(start, stop)
            ]
        )
        images[start:stop] = _render({k: v[start:stop] for k, v in views.items()}, size, noise)
    groups = [f"lesion_{i:05d}" for i in lesion_of_image]
    return SyntheticSet(images=images, labels=labels, groups=groups)


def _structures(name: str, m: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The structures of `m` lesions of class `name`: per slot its kind, whether it is drawn (amp), its place
    (relative radius, angle, offset sx/sy in image units), orientation and streak length factor; per lesion
    the network (its amount and the relative radius it starts at) and the pale centre."""
    k = _SLOTS
    idx = np.arange(k)[None, :]

    def first(lo: int, hi: int) -> np.ndarray:  # the first lo..hi slots of each lesion are drawn
        return idx < rng.integers(lo, hi + 1, (m, 1))

    # Where structures sit (relative radius, uniform over a disc): the nevus's dots anywhere, the lacunae
    # in the inner half, a ring or an arm vertex near the centre.
    rel = np.sqrt(rng.random((m, k))) * (0.85 if name == "nv" else 0.5 if name == "vasc" else 0.3)
    ang = rng.uniform(0, 2 * np.pi, (m, k))
    orient = rng.uniform(0, 2 * np.pi, (m, k))
    shift = np.zeros((m, k, 2))
    stretch = np.ones((m, k))  # streak length factor
    kind = np.full((m, k), DOT)
    on = np.zeros((m, k), bool)
    net, net_inner, pale = np.zeros(m), np.zeros(m), np.zeros(m)
    if name == "akiec":
        kind[:], on = RING, first(1, 1)  # one ring
    elif name in ("bkl", "bcc", "mel"):
        # One vertex with 2 (bkl, V), 3 (bcc, Y) or 4 (mel, X) arms; the arms share one total length.
        arms = {"bkl": 2, "bcc": 3, "mel": 4}[name]
        kind[:], on = STREAK, idx < arms
        rel, ang = np.repeat(rel[:, :1], k, 1), np.repeat(ang[:, :1], k, 1)
        step = 1.9 if arms == 2 else 2 * np.pi / arms
        orient = orient[:, :1] + idx * step + rng.normal(0, 0.12, (m, k))
        length = 4.0 / arms
        shift = np.stack([np.cos(orient), np.sin(orient)], -1) * _KINDS[STREAK, 2] * length
        stretch[:] = length
    elif name == "df":
        net[:], net_inner[:], pale[:] = 1.0, 0.55, 1.0
    elif name == "nv":
        net[:], on = 1.0, first(2, 4)
    elif name == "vasc":
        kind[:], on = BLOB, first(2, 3)
    return {
        "kind": kind, "amp": on.astype(np.float32), "rel": rel, "ang": ang, "orient": orient,
        "sx": shift[..., 0], "sy": shift[..., 1], "stretch": stretch, "net": net, "net_inner": net_inner, "pale": pale,
    }  # fmt: skip


def draw_lesions(cls: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Everything about the lesions of classes `cls` (indices into HAM_CLASSES) that their views share."""
    m = len(cls)
    other = (cls + rng.integers(1, len(HAM_CLASSES), size=m)) % len(HAM_CLASSES)
    own: dict[str, np.ndarray] = {}
    second: dict[str, np.ndarray] = {}
    for target, which in ((own, cls), (second, other)):
        for ci, name in enumerate(HAM_CLASSES):
            sel = np.flatnonzero(which == ci)
            for key, value in _structures(name, len(sel), rng).items():
                target.setdefault(key, np.zeros((m, *value.shape[1:]), value.dtype))[sel] = value
    # Another class's structures, weaker, in the slots a lesion leaves free (for some lesions).
    weight = np.where(rng.random(m) < _SECOND_P, rng.uniform(0, _SECOND_MAX, m), 0.0)
    free = own["amp"] == 0
    out = {
        key: np.where(free, second[key], own[key]) for key in ("kind", "rel", "ang", "orient", "sx", "sy", "stretch")
    }
    out["amp"] = np.where(free, weight[:, None] * second["amp"], own["amp"])
    out["net"] = np.maximum(own["net"], weight * second["net"])
    out["net_inner"] = np.where(own["net"] > 0, own["net_inner"], second["net_inner"])
    faint_patch = np.where(rng.random(m) < _PALE_P, rng.uniform(0.3, 0.7, m), 0.0)
    out["pale"] = np.maximum(np.maximum(own["pale"], weight * second["pale"]), faint_patch)
    contrast = rng.uniform(0.75, 1.0, m)
    out["amp"] = out["amp"] * contrast[:, None] * rng.uniform(0.8, 1.0, (m, _SLOTS))
    out["net"] = out["net"] * contrast
    colour = np.where(rng.random(m) < _TYPICAL, _CLASS_COLOUR[cls], rng.integers(0, len(_PALETTE), m))
    # Lesion colour: light tan to dark brown, for every class; dark structures get a lighter lesion.
    dark_ink = _PALETTE[colour] @ np.array([0.3, 0.59, 0.11], np.float32) < 0.2
    tone = (rng.random(m) * np.where(dark_ink, 0.45, 1.0))[:, None]
    base = (1 - tone) * np.array([0.74, 0.55, 0.46], np.float32) + tone * np.array([0.42, 0.27, 0.2], np.float32)
    harmonics = rng.standard_normal((m, 4))
    lesions = {
        **out,
        "colour": _PALETTE[colour],
        "base": base + rng.normal(0, 0.04, (m, 3)),
        "radius": rng.uniform(0.55, 0.85, m),
        "irregular": rng.uniform(0.02, 0.15, m),
        "harm_amp": harmonics / np.linalg.norm(harmonics, axis=1, keepdims=True),
        "harm_phase": rng.uniform(0, 2 * np.pi, (m, 4)),
        "aspect": rng.uniform(1.0, 1.3, m),
        "angle": rng.uniform(0, 2 * np.pi, m),
        # Plane waves (kx, ky, phase) of the lesion's two noise fields, in lesion coordinates so
        # that every view of the lesion shows the same pattern.
        "waves": np.concatenate(
            [rng.normal(0, 5, (m, 2, _WAVES, 2)), rng.uniform(0, 2 * np.pi, (m, 2, _WAVES, 1))], axis=-1
        ),
        "net_phase": rng.uniform(0, 2 * np.pi, (m, 2)),
        "skin": np.array([0.86, 0.68, 0.58], np.float32) + rng.normal(0, 0.05, (m, 3)),
    }
    return {k: v if k == "kind" else v.astype(np.float32) for k, v in lesions.items()}


def _draw_views(
    lesion: np.ndarray, lesions: dict[str, np.ndarray], size: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    n = len(lesion)
    views = {k: v[lesion] for k, v in lesions.items()}
    views["angle"] = views["angle"] + rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    views["centre"] = rng.normal(0, 0.06, (n, 2)).astype(np.float32)
    views["scale"] = rng.uniform(0.92, 1.08, n).astype(np.float32)
    views["light"] = rng.normal(1.0, 0.05, (n, 3)).astype(np.float32)
    views["gradient"] = rng.normal(0, 0.08, (n, 2)).astype(np.float32)
    views["vignette"] = rng.uniform(0, 0.9, n).astype(np.float32)
    views["hair_line"] = np.concatenate(
        [rng.uniform(0, np.pi, (n, _HAIRS, 1)), rng.uniform(-1, 1, (n, _HAIRS, 1))], axis=-1
    ).astype(np.float32)
    views["hair_on"] = (rng.random((n, _HAIRS)) < 0.15).astype(np.float32)
    views["hair_width"] = np.full(n, max(1.4 / size, 0.012), np.float32)
    views["noise"] = rng.uniform(0.01, 0.03, n).astype(np.float32)
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
    """Blend `base` (n, S, S, 3) towards `colour` (3,) or (n, 1, 1, 3) by `amount` (n, S, S)."""
    return base + amount[..., None] * (np.asarray(colour, np.float32) - base)


def _render(v: dict[str, np.ndarray], size: int, noise: np.ndarray) -> np.ndarray:
    scale = v["scale"]
    radius = _col(v["radius"] * scale)
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2 - 1
    u, w = axis[None, None, :], axis[None, :, None]  # image x (columns), y (rows)
    du, dw = u - _col(v["centre"][:, 0]), w - _col(v["centre"][:, 1])
    cos, sin = np.cos(_col(v["angle"])), np.sin(_col(v["angle"]))
    x = (du * cos + dw * sin) / _col(v["aspect"])  # lesion coordinates
    y = -du * sin + dw * cos
    rho, theta = np.hypot(x, y), np.arctan2(y, x)
    border = np.ones_like(theta)
    for k in range(4):  # harmonics 2..5 make the outline irregular
        harmonic = _col(v["harm_amp"][:, k]) * np.cos((k + 2) * theta + _col(v["harm_phase"][:, k]))
        border += _col(v["irregular"]) * harmonic
    border *= radius
    mask = _sigmoid((border - rho) / (0.05 * radius))
    rel = rho / border  # 0 at the centre, 1 on the outline

    ink_colour = v["colour"][:, None, None, :]
    lesion = np.broadcast_to(v["base"][:, None, None, :], (*mask.shape, 3))
    lesion = lesion * (1 + 0.08 * _field(x / radius, y / radius, v["waves"][:, 0]))[..., None]
    # Network: a warped grid of lines, masked to the rings rel > net_inner.
    warp = 0.6 * _field(x / radius, y / radius, v["waves"][:, 1])
    period = _NET_PERIOD * _col(scale)
    gx = np.sin(np.pi * x / period + _col(v["net_phase"][:, 0]) + warp)
    gy = np.sin(np.pi * y / period + _col(v["net_phase"][:, 1]) + warp)
    lines = np.maximum(np.exp(-(gx**2) / 0.3), np.exp(-(gy**2) / 0.3))
    envelope = _sigmoid((rel - _col(v["net_inner"])) / 0.06) * _sigmoid((0.97 - rel) / 0.04)
    lesion = _mix(lesion, ink_colour, 0.85 * _col(v["net"]) * lines * envelope)
    lesion = _mix(lesion, (0.93, 0.88, 0.84), 0.85 * _col(v["pale"]) * np.exp(-((rel / 0.42) ** 4)))
    # Structures: the distance to a segment (half-length 0 for a point) minus the ring radius, through a Gaussian.
    shape = _KINDS[v["kind"]]  # (n, slots, 3)
    ink = np.zeros_like(rel)
    for s in range(_SLOTS):
        if not v["amp"][:, s].any():
            continue
        sigma, ring, half = (_col(shape[:, s, j] * scale) for j in range(3))
        half = half * _col(v["stretch"][:, s])
        r_at = v["rel"][:, s] * v["radius"] * scale
        cx = _col(r_at * np.cos(v["ang"][:, s]) + v["sx"][:, s] * scale)
        cy = _col(r_at * np.sin(v["ang"][:, s]) + v["sy"][:, s] * scale)
        ox, oy = _col(np.cos(v["orient"][:, s])), _col(np.sin(v["orient"][:, s]))
        px, py = x - cx, y - cy
        t = np.clip(px * ox + py * oy, -half, half)
        dist = np.hypot(px - t * ox, py - t * oy)
        gain = _col(_GAIN[v["kind"][:, s]])
        bump = np.minimum(1, gain * np.exp(-((dist - ring) ** 2) / (2 * sigma**2)))
        ink = np.maximum(ink, _col(v["amp"][:, s]) * bump)
    lesion = _mix(lesion, ink_colour, 0.9 * ink)

    skin = v["skin"][:, None, None, :] * (1 + 0.04 * _field(x, y, v["waves"][:, 0] * 0.5))[..., None]
    img = skin + mask[..., None] * (lesion - skin)
    img *= v["light"][:, None, None, :]
    img *= (1 + _col(v["gradient"][:, 0]) * u + _col(v["gradient"][:, 1]) * w)[..., None]
    corner = np.clip((np.hypot(u, w) - 0.95) / 0.45, 0, 1)
    img *= (1 - _col(v["vignette"]) * corner)[..., None]
    for h in range(_HAIRS):
        ang, off = _col(v["hair_line"][:, h, 0]), _col(v["hair_line"][:, h, 1])
        dist = u * np.sin(ang) - w * np.cos(ang) - off
        hair = _col(v["hair_on"][:, h]) * np.exp(-((dist / _col(v["hair_width"])) ** 2))
        img = _mix(img, (0.16, 0.11, 0.09), 0.85 * hair)
    img += v["noise"][:, None, None, None] * noise
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
