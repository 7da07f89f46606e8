"""PartIoU hand values and LOCATE PartSelect against a per-sample loop reference."""

from __future__ import annotations

import math

import torch

from afford.modules.prototypes import discover_parts, part_iou, select_part_prototypes


def test_part_iou_hand_values_and_nonstandard_term() -> None:
    p = torch.tensor([[[[1, 1], [0, 0]], [[0, 0], [0, 0]]]], dtype=torch.bool)  # (1, 2, 2, 2)
    s = torch.tensor([[[1, 0], [1, 0]]], dtype=torch.bool)
    got = part_iou(p, s)
    # part 0: |P∩S| = 1, |P| = 2, |S| = 2, |P∪S| = 3 -> (1/2 + 2/3) / 2 (a standard IoU would be 1/3)
    assert math.isclose(got[0, 0].item(), (0.5 + 2 / 3) / 2, rel_tol=1e-6)
    assert math.isnan(got[0, 1].item())  # empty part map, eps = 0 -> 0/0
    got_eps = part_iou(p, s, eps=1e-10)
    assert math.isclose(got_eps[0, 1].item(), 0.5, rel_tol=1e-6)  # 0 + |S|/|S|, halved
    assert math.isclose(got_eps[0, 0].item(), (0.5 + 2 / 3) / 2, rel_tol=1e-6)


def _minmax(t: torch.Tensor, eps: float) -> torch.Tensor:
    return (t - t.min()) / (t.max() - t.min() + eps)


def _loop_kmeans(pts: torch.Tensor, c: torch.Tensor, iters: int = 300, tol: float = 1e-4) -> torch.Tensor:
    c = c.clone()
    for _ in range(iters):
        a = torch.cdist(pts, c).argmin(1)
        new = torch.stack([pts[a == j].mean(0) if (a == j).any() else c[j] for j in range(len(c))])
        shift = (new - c).norm(dim=1).max()
        c = new
        if shift < tol:
            break
    return c


def reference_select(exo_cam, exo_desc, ego_desc, sal, init, k=3, cam_thd=0.6, iou_thd=0.6):
    """Sample-by-sample PartSelect written from methods.md §1.2."""
    b, n, d, h, w = exo_desc.shape
    protos, valid = torch.zeros(b, d, dtype=exo_desc.dtype), torch.zeros(b, dtype=torch.bool)
    for i in range(b):
        pts = []
        for j in range(n):
            keep = _minmax(exo_cam[i, j], 1e-10) > cam_thd
            for y in range(h):
                for x in range(w):
                    if keep[y, x]:
                        pts.append(exo_desc[i, j, :, y, x])
        if len(pts) < k:
            continue
        cents = _loop_kmeans(torch.stack(pts), init[i])
        cents = cents / cents.norm(dim=1, keepdim=True)
        ego = ego_desc[i] / ego_desc[i].norm(dim=0, keepdim=True)
        best, best_iou = -1, -1.0
        for c in range(k):
            sim = _minmax((cents[c][:, None, None] * ego).sum(0), 1e-12)
            part = sim > sim.mean()
            inter = int((part & sal[i]).sum())
            union = int((part | sal[i]).sum())
            size = int(part.sum())
            iou = (inter / size + int(sal[i].sum()) / union) / 2 if size > 0 else float("nan")
            if iou > best_iou:  # first maximum, like argmax; nan never wins
                best, best_iou = c, iou
        if best >= 0 and best_iou >= iou_thd:
            protos[i], valid[i] = cents[best], True
    return protos, valid


def _make_batch():
    g = torch.Generator().manual_seed(0)
    b, n, d, h, w = 4, 3, 8, 6, 6
    exo_cam = torch.randn(b, n, h, w, generator=g, dtype=torch.float64)
    exo_desc = torch.randn(b, n, d, h, w, generator=g, dtype=torch.float64)
    ego_desc = torch.randn(b, d, h, w, generator=g, dtype=torch.float64)
    sal = torch.rand(b, h, w, generator=g) > 0.5
    part_dir = torch.zeros(d, dtype=torch.float64)
    part_dir[0] = 5.0
    region = torch.zeros(h, w, dtype=torch.bool)
    region[1:4, 2:5] = True
    # sample 0: the high-CAM exocentric descriptors all point along part_dir, which is also what
    # the egocentric descriptors show inside the salient region -> a clear, valid prototype.
    hot = torch.stack([_minmax(exo_cam[0, j], 1e-10) > 0.6 for j in range(n)])  # (n, h, w)
    exo_desc[0] += 3 * part_dir[None, :, None, None] * hot[:, None].to(exo_desc.dtype)
    ego_desc[0] = 0.2 * ego_desc[0] + region.to(ego_desc.dtype) * part_dir[:, None, None]
    ego_desc[0, 0][~region] = -1.0  # outside the part the descriptors point away from it
    sal[0] = region
    # sample 1: flat CAMs in two images and a single peak in the third -> 1 point < k, skipped.
    exo_cam[1] = 0.0
    exo_cam[1, 2, 3, 3] = 1.0
    return exo_cam, exo_desc, ego_desc, sal


def _reference_init(exo_cam, exo_desc, k=3, seed=7):
    """Random initial centroids chosen among each sample's pooled points (own point order)."""
    g = torch.Generator().manual_seed(seed)
    b, n, d, h, w = exo_desc.shape
    init = torch.zeros(b, k, d, dtype=exo_desc.dtype)
    for i in range(b):
        keep = torch.stack([_minmax(exo_cam[i, j], 1e-10) > 0.6 for j in range(n)])  # (n, h, w)
        pts = exo_desc[i].permute(0, 2, 3, 1)[keep]  # (M, d)
        if len(pts) >= k:
            init[i] = pts[torch.randperm(len(pts), generator=g)[:k]]
    return init


def test_select_matches_per_sample_reference() -> None:
    exo_cam, exo_desc, ego_desc, sal = _make_batch()
    exo_cam.requires_grad_(True)
    init = _reference_init(exo_cam.detach(), exo_desc)
    protos, valid = select_part_prototypes(exo_cam, exo_desc, ego_desc, sal, init=init)
    ref_p, ref_v = reference_select(exo_cam.detach(), exo_desc, ego_desc, sal, init)
    assert protos.shape == (4, 8) and valid.shape == (4,) and valid.dtype == torch.bool
    assert not protos.requires_grad
    assert torch.equal(valid, ref_v)
    torch.testing.assert_close(protos, ref_p, rtol=0, atol=1e-10)
    assert valid.tolist() == [True, False, True, False]  # part found / too few points / found / low pIoU
    torch.testing.assert_close(protos[valid].norm(dim=1), torch.ones(int(valid.sum()), dtype=protos.dtype))
    assert torch.all(protos[~valid] == 0)
    # the prototype of sample 0 is the part direction
    assert protos[0, 0] > 0.99


def test_random_init_is_reproducible_and_details_are_consistent() -> None:
    exo_cam, exo_desc, ego_desc, sal = _make_batch()
    p1, v1 = select_part_prototypes(
        exo_cam, exo_desc, ego_desc, sal, generator=torch.Generator().manual_seed(2)
    )
    p2, v2 = select_part_prototypes(
        exo_cam, exo_desc, ego_desc, sal, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(p1, p2) and torch.equal(v1, v2)
    assert v1[0] and not v1[1]  # sample 0 is valid whatever the start: all its points agree
    sel = discover_parts(exo_cam, exo_desc, ego_desc, sal, generator=torch.Generator().manual_seed(2))
    assert sel.centroids.shape == (4, 3, 8) and sel.parts.shape == (4, 3, 6, 6) and sel.piou.shape == (4, 3)
    assert sel.clustered.tolist()[:2] == [True, False]
    torch.testing.assert_close(sel.piou, part_iou(sel.parts, sal), equal_nan=True)
    assert torch.equal(sel.prototypes, p1) and torch.equal(sel.valid, v1)
    # iou_thd above every score -> nothing valid
    _, v_none = select_part_prototypes(
        exo_cam, exo_desc, ego_desc, sal, iou_thd=1.01, generator=torch.Generator().manual_seed(2)
    )
    assert not v_none.any()
