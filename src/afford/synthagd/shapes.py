"""Geometry primitives and rasterisation for SynthAGD (synthagd.md, "Rendering").

Every shape is a polygon: an ``(N, 2)`` float array of vertices. Ellipses, capsules and rings are
polygons with enough vertices to look round at 224 px, so one code path (PIL ``ImageDraw.polygon``)
rasterises everything and the same geometry serves object parts, actors and targets. A shape
carries a ``hole`` flag so that rings (racket frames, scissor finger rings, wheels) cut their inner
area out of their own part without touching the parts drawn below them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

Shape = tuple[np.ndarray, bool]  # (vertices (N, 2), is_hole)


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Axis-aligned rectangle ``(4, 2)``."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28,
            a0: float = 0.0, a1: float = 2 * math.pi) -> np.ndarray:
    """Ellipse (or an arc of it, closed by its chord when ``a1 - a0 < 2π``) ``(n, 2)``."""
    full = abs(a1 - a0) >= 2 * math.pi - 1e-9
    t = np.linspace(a0, a1, n, endpoint=not full)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


@lru_cache(maxsize=32)
def _half_circle(n: int) -> np.ndarray:
    t = np.linspace(-math.pi / 2, math.pi / 2, n + 1)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def capsule(p0: Sequence[float], p1: Sequence[float], r: float, n: int = 8) -> np.ndarray:
    """Rounded bar of radius ``r`` between two points: handles, fingers, limbs ``(2n+2, 2)``.

    Built from a cached half circle turned by one 2×2 matrix: actors are rebuilt several times per
    image by the occlusion fit, so this is on the hot path.
    """
    a = np.asarray(p0, dtype=np.float64)
    b = np.asarray(p1, dtype=np.float64)
    dx, dy = float(b[0] - a[0]), float(b[1] - a[1])
    ln = math.hypot(dx, dy)
    c, s = (dx / ln, dy / ln) if ln > 1e-12 else (1.0, 0.0)
    arc = _half_circle(n) @ np.array([[c, s], [-s, c]]) * r
    return np.concatenate([b + arc, a - arc], axis=0)


def ring(cx: float, cy: float, rx: float, ry: float, t: float, n: int = 32) -> list[Shape]:
    """Elliptic ring of thickness ``t``: an outer ellipse and an inner hole."""
    return [(ellipse(cx, cy, rx, ry, n), False), (ellipse(cx, cy, rx - t, ry - t, n), True)]


def solid(*polys: np.ndarray) -> list[Shape]:
    """Wrap plain polygons as filled shapes."""
    return [(p, False) for p in polys]


def transform(shapes: Iterable[Shape], A: np.ndarray, b: np.ndarray) -> list[Shape]:
    """Apply ``x -> A x + b`` to every vertex (canonical units -> image pixels)."""
    return [(pts @ A.T + b, hole) for pts, hole in shapes]


def raster(shapes: Iterable[Shape], size: int) -> np.ndarray:
    """Bool mask ``(size, size)`` of the shapes drawn in order (holes clear pixels)."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for pts, hole in shapes:
        if len(pts) >= 3:
            draw.polygon(pts.ravel().tolist(), fill=0 if hole else 1)
    return np.asarray(img, dtype=bool)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` of the true pixels, end-exclusive; ``None`` for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def short_side(mask: np.ndarray) -> float:
    """Short side of a part in pixels, robust to frame-shaped parts.

    The bounding-box short side is right for bars and slabs, but a phone casing (a frame around
    the screen) has a large box and a thin body. ``2·area/(w+h)`` equals the box short side or more
    for a filled rectangle and about the thickness for a frame, so the minimum of the two is the
    "short side" the GT sigma is a sixth of.
    """
    box = bbox(mask)
    if box is None:
        return 0.0
    w, h = box[2] - box[0], box[3] - box[1]
    return float(min(w, h, 2.0 * mask.sum() / (w + h)))


def extent(shapes: Iterable[Shape]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Centre, long axis, short axis and lengths along them of the filled vertices.

    Used to place hands and targets on a part: the long axis is the principal axis of the
    vertices (a handle's length), the short axis crosses it (where the fingers wrap).
    """
    pts = np.concatenate([p for p, hole in shapes if not hole], axis=0)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    c = (lo + hi) / 2
    q = pts - pts.mean(axis=0)
    cov = q.T @ q
    w, v = np.linalg.eigh(cov)
    e = v[:, 1] if w[1] - w[0] > 1e-9 * max(w[1], 1e-12) else np.array([1.0, 0.0])
    n = np.array([-e[1], e[0]])
    pe, pn = (pts - c) @ e, (pts - c) @ n
    c = c + e * (pe.max() + pe.min()) / 2 + n * (pn.max() + pn.min()) / 2
    return c, e, n, float(pe.max() - pe.min()), float(pn.max() - pn.min())


def reach(shapes: Iterable[Shape], c: np.ndarray, d: np.ndarray) -> float:
    """How far the filled vertices extend from ``c`` along unit direction ``d``."""
    pts = np.concatenate([p for p, hole in shapes if not hole], axis=0)
    return float(((pts - c) @ d).max())


def rotation(deg: float) -> np.ndarray:
    """2×2 counter-clockwise rotation (in the canonical, y-up frame)."""
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
