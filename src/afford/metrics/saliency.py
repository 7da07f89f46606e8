"""KLD / SIM / NSS exactly as the WSAG literature computes them (protocol.md §3-§4).

Everything is float64 and batched over ``B`` maps. Maps of different native sizes are accepted
as a list; they are grouped by shape so each group is resized in one call. Bilinear resizing is
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)``, which
is the same half-pixel formula as OpenCV ``INTER_LINEAR`` on float input (§3.2), so no OpenCV.

Two things are selectable and must be reported with every number (see :func:`protocol_info`):

* ``protocol``: ``standard`` (LOCATE reference), the variants ``cvag_test``, ``cvag_epoch_eval``,
  ``cvag_plus`` (§3.5) and ``plsp`` (§4; input = logits, not a CAM).
* ``exact``: ``False`` (afford default) adds ε = 1e-12 to the NSS std (the OOAL fix, recorded as
  ``nss="ooal_eps"``), so a constant prediction scores NSS 0 instead of nan; ``True`` reproduces
  the reference to the bit, nan included (``nss="reference"``). Either way constant predictions
  are flagged per image so a report can count them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from afford.errors import AffordError, did_you_mean

EPS = 1e-12  # the metric epsilon of §3.3
MINMAX_EPS = 1e-10  # LOCATE normalize_map
PLSP_EPS = 1e-10  # added to P inside the PLSP KLD log
PROTOCOLS: tuple[str, ...] = ("standard", "cvag_test", "cvag_epoch_eval", "cvag_plus", "plsp")
NSS_MODES: tuple[str, ...] = ("safe", "ooal_eps", "reference")  # "safe" = "ooal_eps"

MapLike = np.ndarray | torch.Tensor
Maps = MapLike | Sequence[MapLike]


def check_protocol(protocol: str) -> str:
    """Validate a protocol name; the error names the field and the valid choices."""
    if protocol not in PROTOCOLS:
        raise AffordError(
            f"protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}"
            + did_you_mean(protocol, PROTOCOLS)
        )
    return protocol


def resolve_exact(exact: bool, nss: str | None) -> bool:
    """``nss`` (the ARCHITECTURE.md spelling) overrides ``exact`` when given."""
    if nss is None:
        return exact
    if nss not in NSS_MODES:
        raise AffordError(
            f"nss: expected one of {', '.join(NSS_MODES)}, got {nss!r}" + did_you_mean(nss, NSS_MODES)
        )
    return nss == "reference"


def protocol_info(protocol: str = "standard", exact: bool = False, minmax: bool = True) -> dict:
    """What a report must state next to its numbers so they can be reproduced."""
    check_protocol(protocol)
    return {
        "protocol": protocol,
        "nss": "reference" if exact else "ooal_eps",
        "exact": exact,
        "prediction_minmax": minmax if protocol != "plsp" else False,
    }


# ----------------------------------------------------------------------------- batching helpers
def _to_tensor(x: MapLike) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    return t.detach().to("cpu")


def to_list(maps: Maps) -> list[torch.Tensor]:
    """(h, w), (B, h, w) or a sequence of (h_i, w_i) -> list of 2-D tensors (dtype kept)."""
    if isinstance(maps, (np.ndarray, torch.Tensor)):
        t = _to_tensor(maps)
        if t.dim() == 2:
            return [t]
        if t.dim() == 3:
            return list(t.unbind(0))
        raise ValueError(f"maps: expected (h, w) or (B, h, w), got shape {tuple(t.shape)}")
    out = [_to_tensor(m) for m in maps]
    for m in out:
        if m.dim() != 2:
            raise ValueError(f"maps: every map must be 2-D (h, w), got shape {tuple(m.shape)}")
    return out


def check_gts(gts: list[torch.Tensor]) -> None:
    """GTs are uint8 (the PNGs' raw values) or float, finite and non-negative: a nan GT gave KLD/SIM nan but
    a finite NSS 0, a uint16 one a torch error from deep inside the resize."""
    for i, g in enumerate(gts):
        if g.dtype != torch.uint8 and not g.is_floating_point():
            raise ValueError(f"score: GT {i} has dtype {g.dtype}; expected uint8 (0-255) or float")
        if g.numel() == 0:
            raise ValueError(f"score: GT {i} is empty (shape {tuple(g.shape)})")
        if g.is_floating_point() and not (bool(torch.isfinite(g).all()) and float(g.min()) >= 0.0):
            raise ValueError(f"score: GT {i} holds nan, inf or negative values; expected a non-negative heatmap")


def check_predictions(cams: list[torch.Tensor]) -> None:
    """Predictions are real-valued, non-empty and finite: a nan or inf in a map made every metric
    nan without a word (the evaluator refuses such maps; direct calls of score() did not)."""
    for i, c in enumerate(cams):
        if c.dtype == torch.bool or c.is_complex():
            raise ValueError(f"score: prediction {i} has dtype {c.dtype}; expected a real-valued map")
        if c.numel() == 0:
            raise ValueError(f"score: prediction {i} is empty (shape {tuple(c.shape)})")
        if c.is_floating_point() and not bool(torch.isfinite(c).all()):
            raise ValueError(f"score: prediction {i} holds nan or inf; expected a finite map")


def _grouped(maps: list[torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn`` ((b, h, w) -> (b, H, W)) to same-shaped groups and restore input order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(maps):
        groups.setdefault(tuple(m.shape), []).append(i)  # type: ignore[arg-type]
    out: torch.Tensor | None = None
    for idx in groups.values():
        res = fn(torch.stack([maps[i] for i in idx]).to(torch.float64))
        if out is None:
            out = res.new_empty((len(maps), *res.shape[1:]))
        out[idx] = res
    assert out is not None, "empty batch"
    return out


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_bilinear(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """OpenCV-INTER_LINEAR-equivalent resize of ``(B, h, w)`` to ``(B, H, W)`` in float64."""
    x = x.to(torch.float64)
    hw = _size2(size)
    if tuple(x.shape[-2:]) == hw:
        return x.clone()
    return F.interpolate(x[:, None], size=hw, mode="bilinear", align_corners=False, antialias=False)[:, 0]


def minmax(x: torch.Tensor, eps: float = MINMAX_EPS) -> torch.Tensor:
    """Per-map ``(x - min) / (max - min + eps)`` over the last two dims of ``(B, H, W)``."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo) / (hi - lo + eps)


def is_constant(maps: Maps) -> torch.Tensor:
    """``(B,)`` bool: the raw map has max == min (min-max turns it into all zeros)."""
    return torch.stack([m.max() == m.min() for m in to_list(maps)])


# ----------------------------------------------------------------------------- pre-processing
def prepare_prediction(
    cams: Maps,
    size: int | tuple[int, int] = 224,
    protocol: str = "standard",
    exact: bool = False,
    minmax_pred: bool = True,
) -> torch.Tensor:
    """Raw CAMs ``(B, h, w)`` (or a list of any sizes) -> protocol-ready maps ``(B, S, S)``.

    ``standard``: resize, then min-max with +1e-10. ``cvag_test``: resize, min-max without ε
    (a constant map is 0/0 = nan when ``exact``, else 0). ``cvag_epoch_eval``: min-max +1e-10
    first, then resize. ``cvag_plus``: resize to ``size`` = the GT's native (H, W), min-max
    +1e-12. ``plsp``: logits resized, then softmax over all pixels. ``minmax_pred=False`` skips
    the min-max (used for already-normalised maps such as the uniform baseline).
    """
    check_protocol(protocol)
    maps = to_list(cams)

    def run(x: torch.Tensor) -> torch.Tensor:
        if protocol == "plsp":
            y = resize_bilinear(x, size)
            return torch.softmax(y.flatten(1), dim=1).view_as(y)
        if not minmax_pred:
            return resize_bilinear(x, size)
        if protocol == "cvag_epoch_eval":  # min-max first: a constant map is exactly 0 already
            return resize_bilinear(minmax(x, MINMAX_EPS), size)
        y = resize_bilinear(x, size)
        y = minmax(y, {"standard": MINMAX_EPS, "cvag_plus": EPS}.get(protocol, 0.0))
        # A constant raw map is P = 0 after min-max (§3.6), 0/0 = nan in cvag_test's exact mode. The
        # resize does not keep it exactly constant (about 1e-16 of rounding), and min-max and the
        # sum-normalisation of KLD/SIM blew that up into a full map: KLD 0.52 instead of 19.87.
        flat = x.amax(dim=(-2, -1), keepdim=True) == x.amin(dim=(-2, -1), keepdim=True)
        if protocol == "cvag_test" and exact:
            return y.masked_fill(flat, torch.nan)
        return y.masked_fill(flat | y.isnan(), 0.0)  # (a resize of a varying map that came out flat: 0/0)

    return _grouped(maps, run)


def prepare_gt(
    gts: Maps, size: int | tuple[int, int] | None = 224, protocol: str = "standard"
) -> torch.Tensor:
    """GT heatmaps -> ``(B, S, S)`` float64: /255 (uint8 input), then bilinear resize.

    Float input is used as is: every metric is invariant to a positive GT scale, so a GT in
    [0, 1] and one in [0, 255] score the same. ``size=None`` keeps the native size (all GTs must
    then share it; ``cvag_plus``). ``plsp``: an all-zero GT becomes uniform and the map is
    sum-normalised (§4).
    """
    check_protocol(protocol)
    maps = [
        m.to(torch.float64) / 255.0 if m.dtype == torch.uint8 else m.to(torch.float64) for m in to_list(gts)
    ]
    if size is None:
        if len({tuple(m.shape) for m in maps}) != 1:
            raise ValueError("prepare_gt(size=None) needs GTs of one shape; group them first")
        out = torch.stack(maps)
    else:
        out = _grouped(maps, lambda x: resize_bilinear(x, size))
    if protocol == "plsp":
        empty = out.amax(dim=(-2, -1), keepdim=True) == 0
        out = torch.where(empty, torch.ones_like(out), out)
        out = out / out.sum(dim=(-2, -1), keepdim=True)
    return out


# ----------------------------------------------------------------------------- metrics (§3.3)
def _pair(P: torch.Tensor | np.ndarray, G: torch.Tensor | np.ndarray, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``P`` and ``G`` as float64 tensors of one shape ``(..., h, w)``: broadcasting a (1, h, w) GT
    over a batch scored every map against the first GT, and a (B, 1, w) prediction gave a negative KLD."""
    P, G = (torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x for x in (P, G))
    if P.shape != G.shape or P.dim() < 2:
        raise ValueError(f"{what}: prediction and GT must have one shape (h, w) or (B, h, w), got "
                         f"{tuple(P.shape)} and {tuple(G.shape)}; resize with prepare_prediction/prepare_gt, "
                         "or call score() on maps of any size")
    return P.to(torch.float64), G.to(torch.float64)


def _sum_norm(x: torch.Tensor) -> torch.Tensor:
    return x / (x.sum(dim=(-2, -1), keepdim=True) + EPS)


def kld(P: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """``(B,)`` Σ G' ln(G'/(P'+ε) + ε); ε inside the log as in the reference, lower is better."""
    P, G = _pair(P, G, "kld")
    Pn, Gn = _sum_norm(P), _sum_norm(G)
    return (Gn * torch.log(Gn / (Pn + EPS) + EPS)).sum(dim=(-2, -1))


def sim(P: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """``(B,)`` histogram intersection Σ min(P', G') of the sum-normalised maps."""
    P, G = _pair(P, G, "sim")
    Pn, Gn = _sum_norm(P), _sum_norm(G)
    return torch.minimum(Pn, Gn).sum(dim=(-2, -1))


def nss(P: torch.Tensor, G: torch.Tensor, std_eps: float = EPS, single_eps: bool = False) -> torch.Tensor:
    """``(B,)`` mean z-scored prediction over GT pixels with min-max(G) > 0.1 (strict).

    ``std_eps=0`` is the reference (nan for a constant P); the default 1e-12 is the OOAL fix, added
    to the std of ``P / 255`` as the references compute it (§3.3; on ``P`` itself the ε would weigh
    255x less: NSS off by ~1e-9 relative). The denominator is Σ(F + 1e-12) per pixel, or ΣF + 1e-12
    with ``single_eps`` (cvag_plus).
    """
    P, G = _pair(P, G, "nss")
    P = P / 255.0
    mean = P.mean(dim=(-2, -1), keepdim=True)
    std = P.std(dim=(-2, -1), correction=0, keepdim=True)
    s = (P - mean) / (std + std_eps)
    lo, hi = G.amin(dim=(-2, -1), keepdim=True), G.amax(dim=(-2, -1), keepdim=True)
    fix = ((G - lo) / (hi - lo + EPS) > 0.1).to(torch.float64)
    den = fix.sum(dim=(-2, -1)) + EPS if single_eps else (fix + EPS).sum(dim=(-2, -1))
    return (s * fix).sum(dim=(-2, -1)) / den


_nss_metric = nss  # score() has an ``nss`` mode argument that shadows the function name


# ----------------------------------------------------------------------------- PLSP (§4)
def plsp_kld(P: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """``(B,)`` KL(G ‖ P + 1e-10) with 0·ln 0 = 0; P softmax probabilities, G sum-normalised."""
    P, G = _pair(P, G, "plsp_kld")
    return (torch.xlogy(G, G) - G * torch.log(P + PLSP_EPS)).sum(dim=(-2, -1))


def plsp_nss(P: torch.Tensor, G: torch.Tensor, std_eps: float = EPS) -> torch.Tensor:
    """``(B,)`` PLSP NSS: max-normalised maps, unbiased std (ddof 1), threshold ``g >= 0.1``."""
    P, G = _pair(P, G, "plsp_nss")
    p = P / P.amax(dim=(-2, -1), keepdim=True)
    g = G / G.amax(dim=(-2, -1), keepdim=True)
    s = (p - p.mean(dim=(-2, -1), keepdim=True)) / (p.std(dim=(-2, -1), correction=1, keepdim=True) + std_eps)
    fix = (g >= 0.1).to(torch.float64)
    return (s * fix).sum(dim=(-2, -1)) / (fix.sum(dim=(-2, -1)) + EPS)


# ----------------------------------------------------------------------------- one call
def score(
    cams: Maps,
    gts: Maps,
    protocol: str = "standard",
    exact: bool = False,
    size: int = 224,
    minmax_pred: bool = True,
    nss: str | None = None,
) -> dict[str, torch.Tensor]:
    """Score raw CAMs (any sizes) against uint8 GTs (any sizes) under one protocol.

    ``exact=True`` (or ``nss="reference"``) reproduces the reference NSS, nan included; the
    default (``nss="safe"`` = ``"ooal_eps"``) adds 1e-12 to the NSS std. Returns
    ``{"KLD", "SIM", "NSS"}`` as ``(B,)`` float64 plus ``"constant_pred"`` and ``"empty_gt"``
    as ``(B,)`` bool, so a report can count degenerate images.
    """
    check_protocol(protocol)
    exact = resolve_exact(exact, nss)
    cam_list, gt_list = to_list(cams), to_list(gts)
    if len(cam_list) != len(gt_list):
        raise ValueError(f"score: {len(cam_list)} predictions but {len(gt_list)} GTs")
    if not gt_list:
        raise ValueError("score: no maps to score (empty batch)")
    check_gts(gt_list)
    check_predictions(cam_list)
    std_eps = 0.0 if exact else EPS
    flags = {
        "constant_pred": is_constant(cam_list),
        "empty_gt": torch.stack([g.max() == 0 for g in gt_list]),
    }
    if protocol == "cvag_plus":  # prediction goes to the GT's native size; group by that size
        out = {k: torch.empty(len(gt_list), dtype=torch.float64) for k in ("KLD", "SIM", "NSS")}
        groups: dict[tuple[int, int], list[int]] = {}
        for i, g in enumerate(gt_list):
            groups.setdefault(tuple(g.shape), []).append(i)  # type: ignore[arg-type]
        for hw, idx in groups.items():
            P = prepare_prediction([cam_list[i] for i in idx], hw, protocol, exact, minmax_pred)
            G = prepare_gt([gt_list[i] for i in idx], None, protocol)
            out["KLD"][idx], out["SIM"][idx] = kld(P, G), sim(P, G)
            out["NSS"][idx] = _nss_metric(P, G, std_eps, single_eps=True)
        return {**out, **flags}
    P = prepare_prediction(cam_list, size, protocol, exact, minmax_pred)
    G = prepare_gt(gt_list, size, protocol)
    if protocol == "plsp":
        return {"KLD": plsp_kld(P, G), "SIM": sim(P, G), "NSS": plsp_nss(P, G, std_eps), **flags}
    return {"KLD": kld(P, G), "SIM": sim(P, G), "NSS": _nss_metric(P, G, std_eps), **flags}
