"""Exocentric actors for SynthAGD: hands, arms, bodies, heads and tool targets.

The interaction is what makes the weak supervision meaningful (synthagd.md, "Exocentric images"):
grasp -> a hand closes on the part; tool -> the hand grips the handle and the working part touches
a target; mouth -> a head at the rim while a hand holds the grip; touch -> fingertips on the
surface; support/ride/push -> a body on the seat or hands on the handlebar.

Each pose is a function of one scalar ``lam`` in [0, 1] that monotonically pushes the occluder
(hand size, target or head depth, thigh depth) over the affordance part. A short bisection on
``lam`` makes the occluded fraction of the part hit a per-image target in [0.2, 0.6].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from afford.synthagd.render import Placement, random_texture
from afford.synthagd.shapes import Shape, capsule, ellipse, extent, raster, reach, rect, rotation
from afford.synthagd.world import Texture, Use

SKIN: tuple[tuple[float, float, float], ...] = (
    (0.96, 0.80, 0.69), (0.88, 0.68, 0.55), (0.76, 0.57, 0.42), (0.60, 0.42, 0.30), (0.44, 0.30, 0.21),
)


@dataclass(frozen=True)
class Layer:
    """Shapes in image pixels with one paint. ``front``: drawn over the object (else behind it);
    ``human``: part of the actor (the HOI human box); ``occluder``: counts in the occlusion fit."""

    shapes: tuple[Shape, ...]
    tex: Texture
    front: bool = True
    human: bool = True
    occluder: bool = True


def _oval(c: np.ndarray, e: np.ndarray, rx: float, ry: float, n: int = 20) -> np.ndarray:
    """Ellipse with semi-axis ``rx`` along unit ``e`` and ``ry`` across it."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    nn = np.array([-e[1], e[0]])
    return c + np.outer(np.cos(t) * rx, e) + np.outer(np.sin(t) * ry, nn)


def _turn(d: np.ndarray, deg: float) -> np.ndarray:
    # Image frame is y-down, so this turns clockwise on screen; the sign is drawn at random anyway.
    return rotation(deg) @ d


class _Kit:
    """Per-image actor appearance and helpers (all random numbers drawn up front)."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = size
        base = np.array(SKIN[int(rng.integers(len(SKIN)))]) * rng.uniform(0.93, 1.05)
        skin = tuple(float(x) for x in np.clip(base, 0, 1))
        dark = tuple(float(x) for x in np.clip(base * 0.9, 0, 1))
        self.skin = Texture("noise", skin, dark, 0.5, 0.0)  # type: ignore[arg-type]
        self.sleeve = random_texture(rng)
        self.pants = random_texture(rng, (0.1, 0.5), (0.15, 0.5))
        self.hair = Texture("noise", (0.12, 0.08, 0.05), (0.25, 0.17, 0.1), 0.3, 0.0)

    def arm(self, wrist: np.ndarray, d: np.ndarray, r: float) -> list[Layer]:
        """Forearm (skin) then sleeve, reaching past the image border along ``d``."""
        elbow = wrist + d * 2.2 * r
        far = wrist + d * 3.0 * self.size
        return [Layer(((capsule(elbow, far, r * 1.15), False),), self.sleeve),
                Layer(((capsule(wrist, elbow + d * r, r), False),), self.skin)]

    def grip(self, c: np.ndarray, e: np.ndarray, n: np.ndarray, w: float, thick: float) -> list[Shape]:
        """A hand closed on a bar: palm on the ``n`` side, four fingers wrapping across, a thumb."""
        palm_c = c + n * (thick / 2 + 0.15 * w)
        lf = min(thick + 0.35 * w, 1.2 * w)
        fr = max(0.11 * w, 1.0)
        shapes: list[Shape] = [(_oval(palm_c, e, 0.5 * w, 0.42 * w), False)]
        for o in (-0.33, -0.11, 0.11, 0.33):
            p = palm_c + e * o * w
            shapes.append((capsule(p, p - n * lf, fr), False))
        t0 = palm_c + e * 0.45 * w
        shapes.append((capsule(t0, t0 + e * 0.25 * w - n * 0.35 * w, fr * 1.1), False))
        return shapes

    def flat_hand(self, p: np.ndarray, a: np.ndarray, w: float) -> list[Shape]:
        """An open hand whose fingers point along ``-a`` (touch / typing)."""
        perp = np.array([-a[1], a[0]])
        shapes: list[Shape] = [(_oval(p, perp, 0.5 * w, 0.45 * w), False)]
        fr = max(0.1 * w, 1.0)
        for o, ln in ((-0.33, 0.75), (-0.11, 0.95), (0.11, 0.9), (0.33, 0.7)):
            q = p + perp * o * w
            shapes.append((capsule(q, q - a * ln * w, fr), False))
        return shapes


def _target(kind: str, c: np.ndarray, d: np.ndarray, R: float) -> tuple[list[Shape], float]:
    """Tool target shapes centred at ``c`` and their half-extent along ``d``."""
    perp = np.array([-d[1], d[0]])
    if kind == "ball":
        return [(_oval(c, d, 0.8 * R, 0.8 * R, 24), False)], 0.8 * R
    if kind in ("food", "log"):
        return [(_oval(c, perp, 1.3 * R, 0.8 * R, 24), False)], 0.8 * R
    if kind == "bowl":
        t = np.linspace(0, np.pi, 16)
        pts = c - d * 0.2 * R + np.outer(np.cos(t) * 1.2 * R, perp) + np.outer(np.sin(t) * 1.0 * R, d)
        return [(pts, False)], 0.8 * R
    # paper, nail (a plank with a nail), glass: rectangles across the contact direction
    hx, hy = (1.2 * R, 0.7 * R) if kind != "glass" else (0.7 * R, 0.9 * R)
    corners = rect(-hx, -hy, hx, hy)
    pts = c + np.outer(corners[:, 0], perp) + np.outer(corners[:, 1], d)
    return [(pts, False)], hy


def _body_seated(kit: _Kit, hip: np.ndarray, up: np.ndarray, front: np.ndarray, B: float,
                 lean: float) -> list[Layer]:
    """Thigh, shin, torso, head and an arm resting on the knee; ``lean`` in degrees towards
    ``front``."""
    rt = 0.17 * B
    knee = hip + front * B
    foot = knee - up * 1.05 * B + front * 0.1 * B
    torso_d = up + front * np.tan(np.radians(lean))
    torso_d = torso_d / np.linalg.norm(torso_d)
    shoulder = hip + torso_d * 1.25 * B
    head = shoulder + torso_d * 0.45 * B
    hand = knee + up * 0.25 * B
    return [
        Layer(((capsule(knee, foot, 0.13 * B), False),), kit.pants),
        Layer(((capsule(hip, shoulder, 0.27 * B), False),), kit.sleeve),
        Layer(((capsule(hip, knee, rt), False),), kit.pants),
        Layer(((ellipse(*head, 0.24 * B, 0.27 * B, 20), False),), kit.skin),
        Layer(((capsule(shoulder, hand, 0.1 * B), False),), kit.sleeve),
    ]


def build_actor(use: Use, pl: Placement, part_mask: np.ndarray, rng: np.random.Generator,
                size: int) -> tuple[list[Layer], float]:
    """Layers of the actor (and target) for one exocentric image, and the occluded part fraction."""
    kit = _Kit(size, rng)
    s = pl.scale
    part = pl.union(use.parts)
    c, e, n, L, T = extent(part)
    obj_c = np.concatenate([p for pn in pl.spec.parts for p, h in pl.shapes(pn.name) if not h]).mean(axis=0)
    side = 1.0 if float(n @ (c - obj_c)) >= 0 else -1.0
    if abs(float(n @ (c - obj_c))) < 0.05 * s:
        side = 1.0 if rng.uniform() < 0.5 else -1.0
    t_along = float(rng.uniform(-0.25, 0.25))
    arm_turn = float(rng.uniform(-25, 25))
    lam_fixed = float(rng.uniform(0.35, 0.55))
    sign = 1.0 if rng.uniform() < 0.5 else -1.0
    B = 0.42 * s * float(rng.uniform(0.9, 1.1))
    up, front = pl.direction((0, 1)), pl.direction((1, 0))

    def grasp_on(shapes: list[Shape], lam: float, main: bool) -> list[Layer]:
        """Hand on ``shapes``; ``main``: the affordance part itself (use the drawn side)."""
        gc, ge, gn, gL, gT = extent(shapes)
        gside = 1.0 if float(gn @ (gc - obj_c)) >= 0 else -1.0
        gn = gn * (side if main else gside)
        w = max(6.0, (0.12 + 0.8 * lam) * max(gL, gT))
        pos = gc + ge * float(np.clip(t_along * gL, -(gL - w) / 2 - 1e-6, (gL - w) / 2 + 1e-6))
        d = _turn(gn, arm_turn)
        hand = Layer(tuple(kit.grip(pos, ge, gn, w, gT)), kit.skin)
        return [*kit.arm(pos + gn * (gT / 2 + 0.4 * w), d, 0.3 * w), hand]

    make: Callable[[float], list[Layer]]
    if use.pose == "grasp":
        def make(lam: float) -> list[Layer]:
            return grasp_on(part, lam, True)
    elif use.pose == "tool" or use.pose == "mouth":
        grip = pl.union((use.grip,)) if use.grip else part
        d = pl.direction(use.contact)
        far = reach(part, c, d)
        held = grasp_on(grip, lam_fixed, use.grip is None)
        if use.pose == "tool":
            R = 0.5 * max(T, 0.45 * L, 6.0)
            kind = use.target or "ball"
            ttex = random_texture(rng, (0.3, 0.8), (0.4, 0.9))

            def make(lam: float) -> list[Layer]:
                _, hd = _target(kind, c, d, R)
                shapes, _ = _target(kind, c + d * (far + hd) * (1 - lam), d, R)
                return [*held, Layer(tuple(shapes), ttex, human=False)]
        else:
            Rh = 0.3 * s
            neck_d = _turn(d, sign * float(rng.uniform(20, 50)))

            def make(lam: float) -> list[Layer]:
                hc = c + d * (far + Rh) * (1 - 0.8 * lam)
                head = [(ellipse(*hc, Rh, Rh * 1.1, 24), False)]
                hair = [(_oval(hc + d * 0.35 * Rh, d, 0.7 * Rh, 0.95 * Rh), False)]
                neck = [(capsule(hc, hc + neck_d * 3 * size, 0.5 * Rh), False)]
                return [Layer(tuple(neck), kit.sleeve), Layer(tuple(head), kit.skin),
                        Layer(tuple(hair), kit.hair), *held]
    elif use.pose == "touch":
        a = pl.direction(use.contact)
        perp = np.array([-a[1], a[0]])
        span = float(np.ptp([(p @ perp) for sh, h in part if not h for p in sh]))
        w = max(8.0, (0.24 if use.hands == 2 else 0.45) * span)
        offs = [-0.22 * span, 0.22 * span] if use.hands == 2 else [t_along * 0.5 * span]
        far = reach(part, c, a)

        def make(lam: float) -> list[Layer]:
            out: list[Layer] = []
            for k, o in enumerate(offs):
                p = c + perp * o + a * (far + 0.5 * w) * (1 - 0.9 * lam)
                out += kit.arm(p + a * 0.3 * w, _turn(a, arm_turn * (1 if k else -1) * 0.6), 0.3 * w)
                out.append(Layer(tuple(kit.flat_hand(p, a, w)), kit.skin))
            return out
    else:  # support, ride, push: a body
        seat_name = use.parts[0]
        seat = pl.union((seat_name,))
        sc, _, _, sL, _ = extent(seat)
        top = reach(seat, sc, up)
        bar = pl.union(("handlebar",)) if use.pose in ("ride", "push") else None
        hip_x = front * (-0.3 * sL if use.pose == "support" else -0.1 * sL)

        def make(lam: float) -> list[Layer]:
            rt = 0.17 * B
            if use.pose == "push":
                assert bar is not None
                bc = extent(bar)[0]
                ground = reach([p for pn in pl.spec.parts for p in pl.shapes(pn.name)], obj_c, -up)
                hip = obj_c - up * (ground - 2.0 * B) + front * float(front @ (bc - obj_c)) - front * 0.8 * B
                shoulder = hip + up * 1.3 * B
                body = [Layer(((capsule(hip, hip - up * 2.2 * B + front * 0.2 * B, 0.16 * B), False),), kit.pants,
                              front=False),
                        Layer(((capsule(hip, shoulder, 0.27 * B), False),), kit.sleeve, front=False),
                        Layer(((ellipse(*(shoulder + up * 0.45 * B), 0.24 * B, 0.27 * B, 20), False),), kit.skin,
                              front=False)]
                return body + _reach_bar(kit, shoulder, bar, lam)
            hip = sc + hip_x + up * (top + rt * (1 - 2 * lam))
            lean = 20.0 if use.pose == "ride" else -8.0
            body = _body_seated(kit, hip, up, front, B, lean)
            if bar is not None:
                torso_d = up + front * np.tan(np.radians(lean))
                shoulder = hip + torso_d / np.linalg.norm(torso_d) * 1.25 * B
                body += _reach_bar(kit, shoulder, bar, lam_fixed)
            return body

    return _fit(make, part_mask, float(rng.uniform(0.25, 0.55)), size)


def _reach_bar(kit: _Kit, shoulder: np.ndarray, bar: list[Shape], lam: float) -> list[Layer]:
    """An arm from the shoulder to a hand gripping the handlebar."""
    bc, be, bn, bL, bT = extent(bar)
    if float(bn @ (shoulder - bc)) < 0:
        bn = -bn
    w = max(6.0, (0.15 + 0.7 * lam) * bL)
    hand = Layer(tuple(kit.grip(bc, be, bn, w, bT)), kit.skin)
    wrist = bc + bn * (bT / 2 + 0.4 * w)
    arm = Layer(((capsule(shoulder, wrist, 0.32 * w), False),), kit.sleeve)
    return [arm, hand]


def _fit(make: Callable[[float], list[Layer]], part_mask: np.ndarray, target: float,
         size: int, iters: int = 6) -> tuple[list[Layer], float]:
    """Bisection on ``lam`` so that occluders cover ``target`` of the visible part."""
    area = max(int(part_mask.sum()), 1)
    lo, hi = 0.0, 1.0
    best: tuple[float, list[Layer], float] | None = None
    for _ in range(iters):
        lam = (lo + hi) / 2
        layers = make(lam)
        occ_mask = raster([s for ly in layers if ly.occluder and ly.front for s in ly.shapes], size)
        occ = float((occ_mask & part_mask).sum()) / area
        if best is None or abs(occ - target) < best[0]:
            best = (abs(occ - target), layers, occ)
        if occ < target:
            lo = lam
        else:
            hi = lam
    assert best is not None
    return best[1], best[2]

