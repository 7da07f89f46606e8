"""SynthAGD vocabulary and the seeded "world": object part geometry, part roles and palettes.

The vocabulary (which object has which affordance, on which part, with which interaction) is
fixed: it is the semantics of the benchmark. The world (part proportions, colours, textures) is
drawn from the seed alone, so Seen and Unseen generated with one seed show the same objects, and
a different seed gives a different world. Images never change the world, only place it.

Objects are defined in a canonical frame with y up, spanning about one unit on their long side.
Tools point along +x (handle at -x, working part at +x); furniture and vehicles face +x.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from afford.synthagd.shapes import Shape, capsule, ellipse, rect, ring, solid

TEXTURES: tuple[str, ...] = ("noise", "stripes", "checker", "dots", "gradient")


@dataclass(frozen=True)
class Texture:
    """A part's paint: ``kind`` from :data:`TEXTURES`, two RGB colours in [0, 1], a period and an
    angle in canonical units, so the pattern moves and scales with the object."""

    kind: str
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    period: float
    angle: float


@dataclass(frozen=True)
class Part:
    name: str
    shapes: tuple[Shape, ...]
    texture: Texture


@dataclass(frozen=True)
class ObjectSpec:
    """One object category of the world; ``parts`` are in drawing (z) order."""

    name: str
    parts: tuple[Part, ...]
    upright: bool

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)


@dataclass(frozen=True)
class Use:
    """How an affordance is exercised on an object (synthagd.md, "Exocentric images").

    ``parts``: the part(s) the GT names. ``pose``: grasp | tool | mouth | touch | support | ride |
    push. ``grip``: the part the hand holds when it is not the affordance part (tool, mouth).
    ``target``: what the working part touches (tool). ``contact``: canonical direction from the
    affordance part towards the target / head / approaching hand. ``tilt``: exocentric rotation
    range in degrees, applied with a random sign (set for pour and mouth actions, which tilt the
    object towards the target or face). ``hands``: 1, or 2 for typing.
    """

    parts: tuple[str, ...]
    pose: str
    grip: str | None = None
    target: str | None = None
    contact: tuple[float, float] = (0.0, 1.0)
    tilt: tuple[float, float] | None = None
    hands: int = 1


def _grasp(part: str) -> Use:
    return Use((part,), "grasp")


def _tool(part: str, grip: str, target: str, contact: tuple[float, float]) -> Use:
    return Use((part,), "tool", grip=grip, target=target, contact=contact)


VOCAB: dict[str, dict[str, Use]] = {
    "knife": {"hold": _grasp("handle"), "cut_with": _tool("blade", "handle", "food", (0, -1))},
    "scissors": {"hold": _grasp("rings"), "cut_with": _tool("blades", "rings", "paper", (1, 0))},
    "hammer": {"hold": _grasp("handle"), "hit": _tool("head", "handle", "nail", (0, 1))},
    "tennis_racket": {"hold": _grasp("handle"), "swing": _grasp("handle"),
                      "hit": _tool("head", "handle", "ball", (0, 1))},
    "baseball_bat": {"swing": _grasp("handle"), "hit": _tool("barrel", "handle", "ball", (0, 1))},
    "wine_glass": {"hold": _grasp("stem"), "drink_with": Use(("rim",), "mouth", grip="stem", tilt=(25, 55))},
    "bottle": {
        "hold": _grasp("body"), "open": _grasp("cap"),
        "pour": Use(("neck",), "tool", grip="body", target="glass", tilt=(105, 150)),
        "drink_with": Use(("neck", "cap"), "mouth", grip="body", tilt=(30, 60)),
    },
    "chair": {"sit_on": Use(("seat",), "support")},
    "bench": {"sit_on": Use(("seat",), "support")},
    "motorcycle": {"ride": Use(("seat", "handlebar"), "ride"), "push": Use(("handlebar",), "push")},
    "cell_phone": {"hold": _grasp("casing"), "text_on": Use(("screen",), "touch", contact=(0, -1))},
    "keyboard": {"type_on": Use(("keys",), "touch", contact=(0, -1), hands=2)},
    # Unseen-test objects: every affordance below is also taught by a seen object above.
    "axe": {"hold": _grasp("handle"), "cut_with": _tool("blade", "handle", "log", (0, 1))},
    "cup": {"hold": _grasp("handle"), "drink_with": Use(("rim",), "mouth", grip="handle", tilt=(25, 55)),
            "pour": Use(("rim",), "tool", grip="handle", target="bowl", tilt=(100, 140))},
    "bicycle": {"ride": Use(("saddle", "handlebar"), "ride"), "push": Use(("handlebar",), "push")},
    "laptop": {"type_on": Use(("keys",), "touch", contact=(0, -1), hands=2), "open": _grasp("lid")},
}

SEEN_OBJECTS: tuple[str, ...] = (
    "baseball_bat", "bench", "bottle", "cell_phone", "chair", "hammer", "keyboard", "knife",
    "motorcycle", "scissors", "tennis_racket", "wine_glass",
)
UNSEEN_OBJECTS: tuple[str, ...] = ("axe", "bicycle", "cup", "laptop")
UPRIGHT: frozenset[str] = frozenset(
    {"wine_glass", "bottle", "cup", "chair", "bench", "motorcycle", "bicycle", "cell_phone", "keyboard", "laptop"}
)
AFFORDANCES: tuple[str, ...] = tuple(sorted({a for uses in VOCAB.values() for a in uses}))


def split_pairs(split: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train_pairs, test_pairs)`` of (affordance, object) for ``seen`` or ``unseen``.

    Seen: every pair in both sets. Unseen (as AGD20K Unseen): the test set holds only the
    held-out objects, and training keeps the seen objects' pairs whose affordance is tested.
    """
    every = sorted((a, o) for o, uses in VOCAB.items() for a in uses)
    if split == "seen":
        return every, every
    test = [(a, o) for a, o in every if o in UNSEEN_OBJECTS]
    affs = {a for a, _ in test}
    train = [(a, o) for a, o in every if o not in UNSEEN_OBJECTS and a in affs]
    taught = {a for a, _ in train}
    assert affs <= taught, f"unseen affordances not taught by seen objects: {affs - taught}"
    return train, test


# ----------------------------------------------------------------------------- geometry builders
Builder = Callable[[np.random.Generator], list[tuple[str, list[Shape]]]]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _knife(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    hl, ht, bw = _u(r, 0.38, 0.46), _u(r, 0.11, 0.15), _u(r, 0.2, 0.28)
    x0 = -0.5 + hl - 0.02
    blade = np.array([[x0, 0.45 * bw], [0.32, 0.45 * bw], [0.5, 0.3 * bw], [0.42, -0.15 * bw],
                      [0.22, -0.5 * bw], [x0, -0.55 * bw]])
    return [("handle", solid(capsule((-0.5 + ht / 2, 0), (-0.5 + hl, 0), ht / 2))), ("blade", solid(blade))]


def _scissors(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    rx, ry, t = _u(r, 0.13, 0.16), _u(r, 0.1, 0.12), _u(r, 0.045, 0.06)
    cx = -0.5 + rx
    rings = ring(cx, 0.13, rx, ry, t) + ring(cx, -0.13, rx, ry, t)
    rings += solid(capsule((cx + rx - t, 0.1), (-0.08, 0.02), t * 0.7),
                   capsule((cx + rx - t, -0.1), (-0.08, -0.02), t * 0.7))
    w = _u(r, 0.05, 0.07)
    b1 = np.array([[-0.12, w], [0.5, 0.03], [0.49, -0.005], [-0.12, -0.02]])
    b2 = b1 * np.array([1, -1])
    return [("rings", rings), ("blades", solid(b1, b2, ellipse(-0.08, 0, 0.035, 0.035, 12)))]


def _hammer(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    hr, hw, hh = _u(r, 0.045, 0.06), _u(r, 0.14, 0.18), _u(r, 0.42, 0.5)
    claw = np.array([[0.32, -hh * 0.4], [0.46, -hh * 0.4], [0.41, -hh * 0.62], [0.36, -hh * 0.55]])
    head = solid(rect(0.32, -hh * 0.4, 0.32 + hw, hh * 0.6), claw)
    return [("handle", solid(capsule((-0.5 + hr, 0), (0.36, 0), hr))), ("head", head)]


def _axe(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    hr, top = _u(r, 0.04, 0.055), _u(r, 0.32, 0.4)
    blade = np.array([[0.28, -0.08], [0.46, -0.08], [0.5, 0.1], [0.56, top], [0.18, top], [0.25, 0.1]])
    return [("handle", solid(capsule((-0.5 + hr, 0), (0.44, 0), hr))), ("blade", solid(blade))]


def _racket(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    hr, rx, ry = _u(r, 0.045, 0.06), _u(r, 0.24, 0.28), _u(r, 0.18, 0.22)
    cx = 0.5 - rx
    head = solid(np.array([[-0.14, 0.0], [cx - rx + 0.04, 0.12], [cx - rx + 0.04, -0.12]]),
                 ellipse(cx, 0, rx, ry, 32))
    return [("handle", solid(capsule((-0.5 + hr, 0), (-0.1, 0), hr))), ("head", head)]


def _bat(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    hr, br = _u(r, 0.04, 0.05), _u(r, 0.09, 0.11)
    handle = solid(ellipse(-0.47, 0, 0.03, hr * 1.5, 12), capsule((-0.47, 0), (-0.05, 0), hr))
    barrel = solid(np.array([[-0.12, hr], [0.5 - br, br], [0.5 - br, -br], [-0.12, -hr]]),
                   ellipse(0.5 - br, 0, br, br, 16))
    return [("handle", handle), ("barrel", barrel)]


def _wine_glass(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    bw, sw = _u(r, 0.22, 0.27), _u(r, 0.045, 0.06)
    bowl = solid(ellipse(0, 0.25, bw, 0.36, 24, np.pi, 2 * np.pi), rect(-bw, 0.25, bw, 0.3))
    rim = solid(rect(-bw - 0.005, 0.29, bw + 0.005, 0.45), ellipse(0, 0.45, bw + 0.005, 0.055, 20))
    return [("base", solid(ellipse(0, -0.47, 0.2, 0.045, 20))), ("stem", solid(rect(-sw, -0.47, sw, -0.06))),
            ("bowl", bowl), ("rim", rim)]


def _bottle(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    bw, nw, sh = _u(r, 0.16, 0.2), _u(r, 0.07, 0.09), _u(r, 0.05, 0.12)
    neck = np.array([[-bw, sh], [bw, sh], [nw, sh + 0.14], [nw, 0.39], [-nw, 0.39], [-nw, sh + 0.14]])
    body = solid(rect(-bw, -0.46, bw, sh + 0.01), ellipse(0, -0.46, bw, 0.04, 20))
    return [("body", body), ("neck", solid(neck)), ("cap", solid(rect(-nw - 0.01, 0.38, nw + 0.01, 0.5)))]


def _cup(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    w, top = _u(r, 0.26, 0.32), _u(r, 0.26, 0.3)
    handle = ring(w + 0.02, -0.02, _u(r, 0.15, 0.18), _u(r, 0.17, 0.2), 0.065)
    body = solid(np.array([[-w + 0.06, -0.42], [w - 0.06, -0.42], [w, top], [-w, top]]))
    rim = solid(np.array([[-w, top - 0.02], [w, top - 0.02], [w + 0.01, top + 0.14], [-w - 0.01, top + 0.14]]),
                ellipse(0, top + 0.14, w + 0.01, 0.05, 20))
    return [("handle", handle), ("body", body), ("rim", rim)]


def _chair(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    t, bh = _u(r, 0.12, 0.16), _u(r, 0.45, 0.5)
    legs = solid(rect(-0.3, -0.5, -0.24, -0.05), rect(0.24, -0.5, 0.3, -0.05), rect(-0.16, -0.46, -0.11, -0.05))
    seat = solid(rect(-0.33, -0.06, 0.33, -0.06 + t), ellipse(0.33, -0.06 + t / 2, 0.03, t / 2, 10))
    back = solid(rect(-0.33, -0.06 + t, -0.21, bh), rect(-0.33, bh - 0.1, -0.13, bh))
    return [("legs", legs), ("backrest", back), ("seat", seat)]


def _bench(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    t = _u(r, 0.13, 0.17)
    legs = solid(rect(-0.44, -0.38, -0.37, -0.06), rect(0.37, -0.38, 0.44, -0.06))
    back = solid(rect(-0.45, 0.06 + t, -0.41, 0.36), rect(0.41, 0.06 + t, 0.45, 0.36),
                 rect(-0.48, 0.16 + t, 0.48, 0.24 + t), rect(-0.48, 0.3, 0.48, 0.38))
    seat = solid(rect(-0.5, -0.06, 0.5, -0.06 + t))
    return [("legs", legs), ("backrest", back), ("seat", seat)]


def _motorcycle(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    wr = _u(r, 0.16, 0.19)
    wheels = ring(-0.5 + wr, -0.48 + wr, wr, wr, 0.06) + ring(0.5 - wr, -0.48 + wr, wr, wr, 0.06)
    body = solid(np.array([[-0.32, -0.2], [0.2, -0.24], [0.34, -0.04], [0.3, 0.1], [-0.02, 0.1], [-0.4, 0.04]]),
                 capsule((0.5 - wr, -0.48 + wr), (0.32, 0.24), 0.03))
    seat = solid(capsule((-0.34, 0.12), (0.0, 0.12), _u(r, 0.05, 0.065)))
    bar = solid(capsule((0.24, 0.28), (0.42, 0.31), 0.045))
    return [("wheels", wheels), ("body", body), ("seat", seat), ("handlebar", bar)]


def _bicycle(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    wr, fr = _u(r, 0.19, 0.22), 0.035
    rh, fh = np.array([-0.5 + wr, -0.48 + wr]), np.array([0.5 - wr, -0.48 + wr])
    bb, st, ht = np.array([0.0, rh[1]]), np.array([-0.1, 0.1]), np.array([0.22, 0.1])
    wheels = ring(*rh, wr, wr, 0.045) + ring(*fh, wr, wr, 0.045)
    frame = solid(capsule(rh, bb, fr), capsule(bb, st, fr), capsule(rh, st, fr), capsule(st, ht, fr),
                  capsule(bb, ht, fr), capsule(ht, fh, fr), capsule(st, st + [0, 0.08], fr), capsule(ht, ht + [0.02, 0.1], fr))
    saddle = solid(ellipse(-0.1, 0.2, _u(r, 0.11, 0.13), 0.05, 20))
    bar = solid(capsule((0.18, 0.22), (0.36, 0.25), 0.04))
    return [("wheels", wheels), ("frame", frame), ("saddle", saddle), ("handlebar", bar)]


def _rounded(x0: float, y0: float, x1: float, y1: float, rr: float) -> list[Shape]:
    return solid(rect(x0 + rr, y0, x1 - rr, y1), rect(x0, y0 + rr, x1, y1 - rr),
                 *[ellipse(x, y, rr, rr, 10) for x in (x0 + rr, x1 - rr) for y in (y0 + rr, y1 - rr)])


def _phone(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    w, chin = _u(r, 0.24, 0.28), _u(r, 0.16, 0.22)
    casing = _rounded(-w, -0.5, w, 0.5, 0.07)
    screen = solid(rect(-w + 0.05, -0.5 + chin, w - 0.05, 0.44))
    return [("casing", casing), ("screen", screen)]


def _keyboard(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    h = _u(r, 0.2, 0.24)
    return [("frame", _rounded(-0.5, -h, 0.5, h, 0.05)),
            ("keys", solid(rect(-0.45, -h + 0.05, 0.45, h - 0.1)))]


def _laptop(r: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    lh = _u(r, 0.42, 0.48)
    base = solid(np.array([[-0.5, -0.5], [0.5, -0.5], [0.42, -0.1], [-0.42, -0.1]]))
    keys = solid(np.array([[-0.4, -0.42], [0.4, -0.42], [0.35, -0.17], [-0.35, -0.17]]))
    lid = solid(rect(-0.42, -0.1, 0.42, lh))
    screen = solid(rect(-0.36, -0.05, 0.36, lh - 0.06))
    return [("base", base), ("keys", keys), ("lid", lid), ("screen", screen)]


BUILDERS: dict[str, Builder] = {
    "knife": _knife, "scissors": _scissors, "hammer": _hammer, "axe": _axe, "tennis_racket": _racket,
    "baseball_bat": _bat, "wine_glass": _wine_glass, "bottle": _bottle, "cup": _cup, "chair": _chair,
    "bench": _bench, "motorcycle": _motorcycle, "bicycle": _bicycle, "cell_phone": _phone,
    "keyboard": _keyboard, "laptop": _laptop,
}


# ----------------------------------------------------------------------------- palettes, world
def hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (r, g, b)


def _palette(rng: np.random.Generator, n: int) -> list[Texture]:
    """Distinct paints for the ``n`` parts of one object.

    Hues are spread around the wheel from a random start and texture kinds are drawn without
    replacement, so parts differ within an object while a role (handle, seat) gets an unrelated
    colour on every object: colour alone cannot tell the role.
    """
    h0 = rng.uniform()
    kinds = rng.permutation(len(TEXTURES))
    out = []
    for k in range(n):
        h = h0 + k / n + rng.uniform(-0.05, 0.05)
        s, v = rng.uniform(0.35, 0.85), rng.uniform(0.35, 0.9)
        dv = rng.uniform(0.2, 0.35) * (1 if v < 0.6 else -1)
        out.append(Texture(TEXTURES[kinds[k]], hsv(h, s, v), hsv(h + rng.uniform(-0.05, 0.05), s * 0.8, v + dv),
                           float(rng.uniform(0.07, 0.14)), float(rng.uniform(0, np.pi))))
    return out


def make_world(seed: int) -> dict[str, ObjectSpec]:
    """All object categories for ``seed``; depends on nothing else (not split, size or counts)."""
    world: dict[str, ObjectSpec] = {}
    for i, name in enumerate(sorted(BUILDERS)):
        rng = np.random.default_rng([seed, 0x57A1D, i])
        raw = BUILDERS[name](rng)
        # A global aspect jitter so one seed's knives are stubbier than another's.
        S = np.diag([rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1)])
        paints = _palette(rng, len(raw))
        parts = tuple(Part(pn, tuple((p @ S.T, h) for p, h in shapes), tex)
                      for (pn, shapes), tex in zip(raw, paints, strict=True))
        world[name] = ObjectSpec(name, parts, name in UPRIGHT)
    return world
