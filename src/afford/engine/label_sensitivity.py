"""Does a method's heatmap depend on the affordance it is asked about?

Different labels giving nearly the same map (``hold`` vs ``cut_with`` on a knife) is a known
weakness of CAM-based grounding (methods.md §1.6, ``Reagan1311/LOCATE#5``), and SynthAGD puts two
to four affordances on different parts of one object to expose it (synthagd.md, item 5). The
protocol's scores cannot show it: they only ever ask for the image's own affordance.

This diagnostic scores every test image whose object carries other affordances in the test set
twice against the same GT: with the map predicted for the image's own affordance (``right``) and
with the maps predicted for the object's other affordances (``wrong``, averaged). A method that
reads the label scores clearly worse with the wrong one; a label-blind method scores the same and
its maps correlate near 1 (``map_cc``, Pearson correlation of the raw maps). It is an afford
diagnostic, not a published metric; the scores use the run's protocol (:func:`score`).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from tqdm import tqdm

from afford.config import EvalConfig
from afford.data.agd20k import AffordanceTestSet, GTCache, Split
from afford.engine.evaluator import MapFn
from afford.errors import AffordError
from afford.metrics.report import mean_of
from afford.metrics.saliency import score


def map_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two maps; two constant maps are identical (1), one constant map
    and a non-constant one are unrelated (0)."""
    a = a.double().flatten() - a.double().mean()
    b = b.double().flatten() - b.double().mean()
    na, nb = float(a.norm()), float(b.norm())
    tiny = 1e-12
    if na < tiny and nb < tiny:
        return 1.0
    if na < tiny or nb < tiny:
        return 0.0
    return float(a @ b) / (na * nb)


def label_sensitivity(map_fn: MapFn, split: Split, eval_cfg: EvalConfig | None = None, size: int = 224,
                      progress: bool = True) -> dict:
    """Score right-label against wrong-label maps on the test images of multi-affordance objects.

    Returns ``n_images``, ``right`` / ``wrong`` (mean ``KLD`` and ``SIM``), ``map_cc`` and
    ``per_object`` (the same per object name). Raises if no test object carries two affordances.
    """
    ecfg = eval_cfg or EvalConfig()
    ds = AffordanceTestSet(split, size=size)
    affs_of: dict[str, set[str]] = defaultdict(set)
    for it in ds.items:
        affs_of[it.object].add(it.affordance)
    todo = [i for i, it in enumerate(ds.items) if len(affs_of[it.object]) > 1]
    if not todo:
        raise AffordError(f"{split.root}: label sensitivity needs test objects with two or more affordances; "
                          "every object here has one")
    gts = GTCache(split)
    rows: dict[str, list[tuple[float, float, float, float, float]]] = defaultdict(list)
    for i in tqdm(todo, desc="label sensitivity", unit="img", disable=not progress, leave=False):
        it = ds.items[i]
        others = sorted(affs_of[it.object] - {it.affordance})
        labels = torch.tensor([split.label(it.affordance)] + [split.label(a) for a in others])
        image = ds[i]["image"]
        maps = map_fn(image[None].repeat(len(labels), 1, 1, 1), labels).double()
        s = score(list(maps), [gts[it]] * len(labels), ecfg.protocol, ecfg.exact)
        cc = mean_of([map_correlation(maps[0], m) for m in maps[1:]])
        rows[it.object].append((float(s["KLD"][0]), float(s["KLD"][1:].mean()), float(s["SIM"][0]),
                                float(s["SIM"][1:].mean()), cc))

    def summarise(rs: list[tuple[float, float, float, float, float]]) -> dict:
        cols = list(zip(*rs, strict=True))
        return {"n": len(rs), "right": {"KLD": mean_of(cols[0]), "SIM": mean_of(cols[2])},
                "wrong": {"KLD": mean_of(cols[1]), "SIM": mean_of(cols[3])}, "map_cc": mean_of(cols[4])}

    every = [r for rs in rows.values() for r in rs]
    out = summarise(every)
    return {"n_images": out.pop("n"), **out, "protocol": ecfg.protocol,
            "per_object": {o: summarise(rs) for o, rs in sorted(rows.items())}}


def format_label_sensitivity(rows: dict[str, dict]) -> str:
    """Markdown table of the ``label_sensitivity`` entries of report rows (rows without one skipped)."""
    lines = ["| row | n | right-label KLD ↓ | wrong-label KLD | right-label SIM ↑ | wrong-label SIM | map correlation |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        ls = row.get("label_sensitivity")
        if ls:
            r, w = ls["right"], ls["wrong"]
            lines.append(f"| {name} | {ls['n_images']} | {r['KLD']:.3f} | {w['KLD']:.3f} | {r['SIM']:.3f} | "
                         f"{w['SIM']:.3f} | {ls['map_cc']:.3f} |")
    return "\n".join(lines)
