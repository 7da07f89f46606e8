"""Dataset-level aggregation of per-image scores (protocol.md §3.4).

The dataset score is the plain mean over **all** test images (no per-class averaging), so a
single nan NSS (reference mode, constant prediction) makes the dataset NSS nan, exactly as in
LOCATE. The summary therefore also counts nan images and gives the mean over finite values
(``NSS_finite``) so a reader sees both. Per-affordance / per-object breakdowns are diagnostics
only (``per_pair`` keys are ``"<affordance>/<object>"``); the headline numbers never average
over classes. Per-image values are kept at full precision so any variant can be recomputed
offline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

METRICS: tuple[str, ...] = ("KLD", "SIM", "NSS")


def mean_of(values: Sequence[float]) -> float:
    """sum/len like the reference; nan propagates; nan for an empty list."""
    return sum(values) / len(values) if values else math.nan


def _group_summary(rows: Sequence[dict]) -> dict:
    out: dict = {"n": len(rows)}
    for m in METRICS:
        out[m] = mean_of([r[m] for r in rows])
    return out


class MetricAccumulator:
    """Collects per-image scores batch by batch and summarises them.

    ``protocol_info`` (from :func:`afford.metrics.saliency.protocol_info`) is copied into the
    summary, so every number is labelled with the protocol and NSS mode that produced it.
    """

    def __init__(self, protocol_info: Mapping | None = None) -> None:
        self.protocol_info = dict(protocol_info or {"protocol": "standard", "nss": "ooal_eps"})
        self._rows: list[dict] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self,
        scores: Mapping[str, torch.Tensor],
        affordances: Sequence[str],
        objects: Sequence[str],
        names: Sequence[str],
    ) -> None:
        """Append one batch: ``scores[m]`` is ``(B,)`` for m in KLD/SIM/NSS, optional bool
        ``(B,)`` flags ``constant_pred`` / ``empty_gt``; the three lists have length B."""
        n = len(names)
        if not (len(affordances) == len(objects) == n):
            raise ValueError("add: affordances, objects and names must have the same length")
        cols = {m: torch.as_tensor(scores[m], dtype=torch.float64).reshape(-1).tolist() for m in METRICS}
        for m, v in cols.items():
            if len(v) != n:
                raise ValueError(f"add: scores[{m!r}] has {len(v)} values for {n} images")
        flags = {
            f: torch.as_tensor(scores[f]).reshape(-1).bool().tolist() if f in scores else [False] * n
            for f in ("constant_pred", "empty_gt")
        }
        for i in range(n):
            self._rows.append(
                {
                    "affordance": affordances[i],
                    "object": objects[i],
                    "name": names[i],
                    **{m: cols[m][i] for m in METRICS},
                    **{f: flags[f][i] for f in flags},
                }
            )

    def per_image(self) -> list[dict]:
        """One dict per image, full precision, in insertion order (for JSON storage)."""
        return [dict(r) for r in self._rows]

    def summary(self) -> dict:
        """Headline means over all images, degenerate-image counts, per-class breakdowns."""
        rows = self._rows
        nss_finite = [r["NSS"] for r in rows if not math.isnan(r["NSS"])]
        out: dict = {
            **self.protocol_info,
            "n_images": len(rows),
            **{m: mean_of([r[m] for r in rows]) for m in METRICS},
            "NSS_finite": mean_of(nss_finite),
            "n_nan_nss": len(rows) - len(nss_finite),
            "n_constant_pred": sum(r["constant_pred"] for r in rows),
            "n_empty_gt": sum(r["empty_gt"] for r in rows),
            "constant_pred_images": [_key(r) for r in rows if r["constant_pred"]],
        }
        keys = {"per_affordance": lambda r: r["affordance"], "per_object": lambda r: r["object"],
                "per_pair": lambda r: f"{r['affordance']}/{r['object']}"}
        for field, key in keys.items():
            groups: dict[str, list[dict]] = {}
            for r in rows:
                groups.setdefault(key(r), []).append(r)
            out[field] = {k: _group_summary(v) for k, v in sorted(groups.items())}
        return out


def _key(row: Mapping) -> str:
    return f"{row['affordance']}/{row['object']}/{row['name']}"


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3f}"


def format_table(rows: Mapping[str, Mapping]) -> str:
    """Markdown table, one line per named summary, 3 decimals (the literature's precision)."""
    lines = [
        "| name | protocol | nss | n | KLD ↓ | SIM ↑ | NSS ↑ | nan NSS |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in rows.items():
        lines.append(
            f"| {name} | {s.get('protocol', '?')} | {s.get('nss', '?')} | {s.get('n_images', 0)} | "
            f"{_fmt(s['KLD'])} | {_fmt(s['SIM'])} | {_fmt(s['NSS'])} | {s.get('n_nan_nss', 0)} |"
        )
    return "\n".join(lines)


def format_breakdown(rows: Mapping[str, Mapping], reference: str, field: str = "per_affordance") -> str:
    """Markdown table of KLD / SIM per class (``field`` of each summary), one column pair per row
    name; a ``*`` marks a class where that row beats ``reference`` on both KLD and SIM.

    This is where label insensitivity shows: a method can beat the whole-object map on the
    affordances whose interaction is visible (tool contact, mouth) and lose on the others.
    """
    if reference not in rows:
        raise KeyError(f"format_breakdown: reference row {reference!r} not among {list(rows)}")
    names = list(rows)
    classes = sorted({c for s in rows.values() for c in s.get(field, {})})
    head = "| " + field.removeprefix("per_") + " | n | " + " | ".join(f"{n} KLD ↓ | SIM ↑" for n in names) + " |"
    lines = [head, "|---|---:|" + "---:|---:|" * len(names)]
    won = {n: set() if n == reference else set(wins_over(rows, n, reference, field)) for n in names}
    for c in classes:
        cells = []
        for n in names:
            g = rows[n].get(field, {}).get(c)
            if g is None:
                cells += ["-", "-"]
                continue
            cells += [f"{_fmt(g['KLD'])}{'*' if c in won[n] else ''}", _fmt(g["SIM"])]
        n_img = next((s[field][c]["n"] for s in rows.values() if c in s.get(field, {})), 0)
        lines.append(f"| {c} | {n_img} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wins_over(rows: Mapping[str, Mapping], name: str, reference: str, field: str = "per_affordance") -> list[str]:
    """Classes of ``field`` where row ``name`` beats ``reference`` on both KLD and SIM."""
    mine, ref = rows[name].get(field, {}), rows[reference].get(field, {})
    return [c for c in sorted(mine) if c in ref and mine[c]["KLD"] < ref[c]["KLD"] and mine[c]["SIM"] > ref[c]["SIM"]]


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


def format_label_sensitivity(rows: Mapping[str, Mapping], legend: bool = True) -> str:
    """Markdown table of the ``label_sensitivity`` entries of report rows (rows without one skipped),
    after a one-line legend (``legend``): the table is read by comparing the right- and wrong-label columns."""
    head = ["Label sensitivity: each image scored with its own affordance's map (right) and with its object's other "
            "affordances' maps (wrong); a label-blind map scores the same and its maps correlate near 1.",
            ""] if legend else []
    lines = [*head, "| row | n | right-label KLD ↓ | wrong-label KLD | right-label SIM ↑ | wrong-label SIM | map correlation "
                    "| right label better |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, row in rows.items():
        ls = row.get("label_sensitivity")
        if ls:
            r, w = ls["right"], ls["wrong"]
            lines.append(f"| {name} | {ls['n_images']} | {r['KLD']:.3f} | {w['KLD']:.3f} | {r['SIM']:.3f} | "
                         f"{w['SIM']:.3f} | {ls['map_cc']:.3f} | {label_verdict(ls)} |")
    return "\n".join(lines)


def label_verdict(ls: Mapping) -> str:
    """``yes`` when the right label scores better on KLD and SIM, ``no (wrong better)`` when the
    wrong one does on both, else ``mixed``: the table's reading, said in its own column."""
    r, w = ls["right"], ls["wrong"]
    if r["KLD"] < w["KLD"] and r["SIM"] > w["SIM"]:
        return "yes"
    if r["KLD"] > w["KLD"] and r["SIM"] < w["SIM"]:
        return "no (wrong better)"
    return "mixed"
