"""Painting and compositing for SynthAGD: textures, backgrounds, object placement.

All randomness comes from the per-image ``numpy.random.Generator`` passed in, and every function
draws from it in a fixed order, so an image depends only on its own seed and not on what was
generated before it (order and parallelism do not matter).

Textures are evaluated in the object's canonical coordinates, so a pattern turns and scales with
its part; the period is clamped to a minimum number of pixels so that patterns stay readable at the
small sizes the demo trains at (and JPEG does not smear them into a colour average).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from afford.synthagd.shapes import Shape, capsule, ellipse, raster, rect, rotation, transform
from afford.synthagd.world import ObjectSpec, Texture, hsv

MIN_PERIOD_PX = 6.0  # a texture period below ~6 px aliases at 96-112 px and after JPEG


@dataclass(frozen=True)
class Placement:
    """An object in an image: ``pixel = A @ canonical + b`` (A includes scale, rotation, flip and
    the y-up -> y-down change)."""

    spec: ObjectSpec
    A: np.ndarray
    b: np.ndarray

    @property
    def scale(self) -> float:
        return float(math.sqrt(abs(np.linalg.det(self.A))))

    def shapes(self, part: str) -> list[Shape]:
        return transform(self.spec.part(part).shapes, self.A, self.b)

    def union(self, parts: tuple[str, ...] | list[str]) -> list[Shape]:
        return [s for p in parts for s in self.shapes(p)]

    def direction(self, d: tuple[float, float]) -> np.ndarray:
        """A canonical direction mapped to a unit image direction."""
        v = self.A @ np.asarray(d, dtype=np.float64)
        return v / (np.linalg.norm(v) + 1e-12)


def place(spec: ObjectSpec, size: int, rng: np.random.Generator, span: float, tilt: float,
          flip: bool) -> Placement:
    """Scale the object so its rotated bounding box spans ``span`` of the image, rotate by ``tilt``
    degrees, optionally mirror, and put it at a random position that keeps it inside the frame."""
    pts = np.concatenate([p for part in spec.parts for p, _ in part.shapes], axis=0)
    M = np.diag([1.0, -1.0]) @ rotation(tilt) @ np.diag([-1.0 if flip else 1.0, 1.0])
    q = pts @ M.T
    lo, hi = q.min(axis=0), q.max(axis=0)
    s = span * size / float((hi - lo).max())
    lo, hi = lo * s, hi * s
    room = size - (hi - lo)
    off = np.array([rng.uniform(0, r) if r > 0 else r / 2 for r in room])
    return Placement(spec, s * M, off - lo)


# ----------------------------------------------------------------------------- paint
def paint(tex: Texture, u: np.ndarray, v: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """RGB ``(n, 3)`` float32 for pixels at canonical coordinates ``(u, v)``; ``scale`` = px/unit."""
    a = np.asarray(tex.a, dtype=np.float32)
    b = np.asarray(tex.b, dtype=np.float32)
    p = max(tex.period, MIN_PERIOD_PX / max(scale, 1e-6))
    ca, sa = math.cos(tex.angle), math.sin(tex.angle)
    w = (u * ca + v * sa) / p
    z = (-u * sa + v * ca) / p
    if tex.kind == "stripes":
        t = np.clip(0.5 + 2.0 * np.sin(2 * np.pi * w), 0, 1)
    elif tex.kind == "checker":
        t = np.clip(0.5 + 3.0 * np.sin(2 * np.pi * w) * np.sin(2 * np.pi * z), 0, 1)
    elif tex.kind == "dots":
        t = (((w % 1.0) - 0.5) ** 2 + ((z % 1.0) - 0.5) ** 2 < 0.08).astype(np.float32)
    elif tex.kind == "gradient":
        t = (w - w.min()) / (np.ptp(w) + 1e-6) if w.size else w
    else:  # noise: a slow mottle
        t = 0.5 + 0.5 * np.sin(2 * np.pi * w / 3.1) * np.sin(2 * np.pi * z / 2.3)
    t = t.astype(np.float32)[:, None]
    col = a * (1 - t) + b * t
    return col + rng.standard_normal((len(u), 1), dtype=np.float32) * 0.025


class Canvas:
    """An ``(S, S, 3)`` float image that layers are painted onto through masks."""

    def __init__(self, size: int, img: np.ndarray):
        self.size = size
        self.flat = img.reshape(-1, 3)

    def fill(self, mask: np.ndarray, tex: Texture, rng: np.random.Generator, A: np.ndarray,
             b: np.ndarray, gain: float = 1.0) -> None:
        """Paint ``tex`` where ``mask`` is set, in the frame ``pixel = A @ local + b``."""
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return
        ys, xs = np.divmod(idx, self.size)
        Ai = np.linalg.inv(A)
        x, y = xs.astype(np.float32) + 0.5 - b[0], ys.astype(np.float32) + 0.5 - b[1]
        u, v = Ai[0, 0] * x + Ai[0, 1] * y, Ai[1, 0] * x + Ai[1, 1] * y
        scale = float(math.sqrt(abs(np.linalg.det(A))))
        self.flat[idx] = paint(tex, u.astype(np.float32), v.astype(np.float32), scale, rng) * gain

    def image(self) -> np.ndarray:
        return (np.clip(self.flat, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(self.size, self.size, 3)


def random_texture(rng: np.random.Generator, s_range: tuple[float, float] = (0.1, 0.6),
                   v_range: tuple[float, float] = (0.3, 0.9), contrast: float = 0.3) -> Texture:
    """A random paint (backgrounds, clutter, targets, clothes)."""
    h, s, v = rng.uniform(), rng.uniform(*s_range), rng.uniform(*v_range)
    kind = ("noise", "stripes", "checker", "dots", "gradient")[int(rng.integers(5))]
    dv = contrast * (1 if v < 0.6 else -1)
    return Texture(kind, hsv(h, s, v), hsv(h + rng.uniform(-0.08, 0.08), s, v + dv),
                   float(rng.uniform(0.15, 0.35)), float(rng.uniform(0, math.pi)))


def background(size: int, rng: np.random.Generator, difficulty: float) -> Canvas:
    """A textured floor/wall plus a few clutter shapes; ``difficulty`` scales contrast and clutter."""
    tex = random_texture(rng, (0.05, 0.35), (0.4, 0.85), 0.04 + 0.12 * difficulty)
    # The floor pattern is low-frequency: paint it at quarter resolution and upsample (4x cheaper).
    lo = max(size // 4, 8)
    small = Canvas(lo, np.empty((lo, lo, 3), dtype=np.float32))
    small.fill(np.ones((lo, lo), dtype=bool), tex, rng, np.eye(2) * lo, np.zeros(2))
    img = Image.fromarray(small.image()).resize((size, size), Image.Resampling.BILINEAR)
    canvas = Canvas(size, np.asarray(img, dtype=np.float32) / 255.0)
    n = int(rng.integers(0, 1 + round(3 * difficulty)))
    for _ in range(n):
        c = rng.uniform(0, size, 2)
        r = rng.uniform(0.04, 0.12) * size
        kind = int(rng.integers(3))
        if kind == 0:
            poly = ellipse(c[0], c[1], r, r * rng.uniform(0.4, 1.0), 20)
        elif kind == 1:
            poly = rect(c[0] - r, c[1] - r * 0.6, c[0] + r, c[1] + r * 0.6) @ rotation(rng.uniform(0, 90)).T
            poly = poly - poly.mean(axis=0) + c
        else:
            poly = capsule(c, c + rng.uniform(-1.5, 1.5, 2) * r, r * 0.25)
        canvas.fill(raster([(poly, False)], size), random_texture(rng), rng, np.eye(2) * size, np.zeros(2))
    return canvas


def draw_object(canvas: Canvas, pl: Placement, masks: list[np.ndarray], rng: np.random.Generator,
                gain: float = 1.0) -> np.ndarray:
    """Paint the parts (``masks`` in z-order, one per part) and return the object mask."""
    jitter = rng.uniform(0.9, 1.1, len(pl.spec.parts)).astype(np.float32)
    for k, (part, m) in enumerate(zip(pl.spec.parts, masks, strict=True)):
        canvas.fill(m, part.texture, rng, pl.A, pl.b, gain * float(jitter[k]))
    return np.logical_or.reduce(masks)
