"""Affinity head, pair neighbourhoods, the §5 loss, the head trained by the engine, and the refiner."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from afford.engine.refinement import load_refiner, save_refiner
from afford.engine.tasks import Task
from afford.engine.trainer import train
from afford.errors import AffordError
from afford.labels import LabelSpace
from afford.refine.affinity_head import (
    AffinityHead,
    disc_affinity,
    full_disc_offsets,
    half_disc_offsets,
    pair_affinity,
    pair_labels,
)
from afford.refine.affinity_loss import affinity_loss
from afford.refine.head_training import AffinityHeadTraining
from afford.refine.refiner import AffinityRefiner


def test_half_disc_has_34_offsets_for_radius_5() -> None:
    offs = half_disc_offsets(5)
    assert len(offs) == 34
    assert [sum(1 for dy, _ in offs if dy == r) for r in range(5)] == [4, 9, 9, 7, 5]
    assert len(set(offs)) == 34 and (0, 0) not in offs
    assert not any((-dy, -dx) in offs for dy, dx in offs)  # each unordered pair once
    assert all(dy * dy + dx * dx < 25 for dy, dx in offs)
    full = full_disc_offsets(5)
    assert full[0] == (0, 0) and len(full) == 69 and set(full) == {(-dy, -dx) for dy, dx in full}
    # every in-disc offset is present
    assert len(full) == sum(1 for dy in range(-4, 5) for dx in range(-4, 5) if dy * dy + dx * dx < 25)


def test_pair_affinity_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 5, 7, 9, generator=g, dtype=torch.float64)
    r = 3
    aff = pair_affinity(f, r)
    offs = half_disc_offsets(r)
    froms = [(y, x) for y in range(0, 7 - (r - 1)) for x in range(r - 1, 9 - (r - 1))]
    assert aff.shape == (2, len(offs), len(froms))
    for b in range(2):
        for p, (dy, dx) in enumerate(offs):
            for n, (y, x) in enumerate(froms):
                d = sum(abs(float(f[b, ch, y, x] - f[b, ch, y + dy, x + dx])) for ch in range(5)) / 5
                assert float(aff[b, p, n]) == pytest.approx(math.exp(-d), abs=1e-12)


LABELS = torch.tensor([[[0, 0, 1, 1], [0, 255, 1, 1], [0, 0, 1, 255]]])


def test_pair_labels_hand_computed() -> None:
    # radius 2: offsets (0,1), (1,-1), (1,0), (1,1); "from" cells (0,1), (0,2), (1,1), (1,2)
    assert half_disc_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    bg, fg, neg = pair_labels(LABELS, 2)

    def cells(mask: torch.Tensor) -> set[tuple[int, int]]:
        return {(int(p), int(n)) for p, n in mask[0].nonzero().tolist()}

    assert cells(bg) == {(1, 0)}  # (0,1)=0 -> (1,0)=0
    assert cells(fg) == {(0, 1), (2, 1), (3, 1), (0, 3), (2, 3)}
    assert cells(neg) == {(0, 0), (3, 0), (1, 3)}
    assert float(bg.sum() + fg.sum() + neg.sum()) == 9  # the 7 pairs touching 255 are ignored


def test_affinity_loss_hand_computed() -> None:
    bg, fg, neg = pair_labels(LABELS, 2)
    aff = torch.tensor([[[0.1 * (p + 1) + 0.05 * n for n in range(4)] for p in range(4)]], dtype=torch.float64)
    out = affinity_loss(aff, bg, fg, neg)
    a = aff[0].tolist()
    e = 1e-5
    l_bg = -math.log(a[1][0] + e) / (1 + e)
    l_fg = -sum(math.log(a[p][n] + e) for p, n in [(0, 1), (2, 1), (3, 1), (0, 3), (2, 3)]) / (5 + e)
    l_neg = -sum(math.log(1 + e - a[p][n]) for p, n in [(0, 0), (3, 0), (1, 3)]) / (3 + e)
    assert float(out["bg_pos"]) == pytest.approx(l_bg, rel=1e-12)
    assert float(out["fg_pos"]) == pytest.approx(l_fg, rel=1e-12)
    assert float(out["neg"]) == pytest.approx(l_neg, rel=1e-12)
    assert float(out["loss"]) == pytest.approx(l_bg / 4 + l_fg / 4 + l_neg / 2, rel=1e-12)
    empty = affinity_loss(aff, torch.zeros_like(bg), fg, neg)
    assert float(empty["bg_pos"]) == 0.0  # the 1e-5 in the denominator keeps an empty set finite


def test_disc_affinity_is_symmetric_with_unit_diagonal() -> None:
    f = torch.randn(1, 6, 6, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = disc_affinity(f, 3).to_dense()[0]
    n = 42
    assert torch.equal(w, w.t()) and torch.equal(w.diagonal(), torch.ones(n, dtype=w.dtype))
    flat = f[0].reshape(6, -1)
    for i in range(n):
        for j in range(n):
            (yi, xi), (yj, xj) = divmod(i, 7), divmod(j, 7)
            inside = (yi - yj) ** 2 + (xi - xj) ** 2 < 9
            expected = math.exp(-float((flat[:, i] - flat[:, j]).abs().mean())) if inside else 0.0
            assert float(w[i, j]) == pytest.approx(expected, abs=1e-12)
    cos = disc_affinity(f, 3, kind="cosine").to_dense()[0]
    assert (cos >= 0).all() and torch.allclose(cos, cos.t())


def test_head_forward_matches_manual_computation() -> None:
    torch.manual_seed(0)
    head = AffinityHead([16, 32])
    assert head.widths == [8, 8] and head.out_dim == 16
    assert all(m.bias is None for m in [*head.reducers, head.fuse])
    f1, f2 = torch.randn(2, 16, 5, 5), torch.randn(2, 32, 10, 10)  # second level at another resolution
    out = head([f1, f2])
    f2r = F.interpolate(f2, size=(5, 5), mode="bilinear", align_corners=False)
    z = [F.elu(torch.einsum("oi,bihw->bohw", conv.weight[:, :, 0, 0], f)) for conv, f in zip(head.reducers, [f1, f2r], strict=True)]
    manual = F.elu(torch.einsum("oi,bihw->bohw", head.fuse.weight[:, :, 0, 0], torch.cat(z, 1)))
    assert out.shape == (2, 16, 5, 5) and torch.allclose(out, manual, atol=1e-5)
    with pytest.raises(AffordError, match="channels"):
        head([f1, torch.randn(2, 31, 5, 5)])


class _HalvesTeacher(torch.nn.Module):
    """A frozen 'run' on images whose left/right halves differ: features are a fixed random lift of
    the 4x4-pooled image, the CAM a soft left-half map."""

    def __init__(self) -> None:
        super().__init__()
        self.lift = torch.nn.Parameter(torch.randn(8, 3, generator=torch.Generator().manual_seed(99)))

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [torch.einsum("dc,bchw->bdhw", self.lift, F.avg_pool2d(images, 4))]

    def predict(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, 4).mean(1) + 0.05 * labels[:, None, None]


class _HalvesImages(torch.utils.data.Dataset):
    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 32, 32, generator=g) * 0.1
        self.images[..., :16] += 1.0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"ego": self.images[i], "label": torch.tensor(0)}

    def set_epoch(self, epoch: int) -> None:
        pass


class _HalvesTask(Task):
    name = "halves"
    labels = LabelSpace.affordances(["hold"])

    def train_set(self, cfg):
        return _HalvesImages()


def _train_head(run: Path, *sets: str, resume: bool = False) -> tuple[AffinityHeadTraining, list[dict]]:
    from afford.config import load_config

    teacher = _HalvesTeacher()
    built: list[AffinityHeadTraining] = []

    def build(name, model_cfg, labels):
        built.append(AffinityHeadTraining(model_cfg, labels, teacher=teacher))
        return built[-1]

    cfg = load_config("affinity_refiner", ["model.radius=3", "train.batch_size=2", "train.device=cpu", *sets])
    train(cfg, run, resume=resume, progress=False, task=_HalvesTask(), build_method=build)
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return built[0].eval(), [r for r in rows if r["kind"] == "train"]


def test_the_engine_trains_the_head_psa_poly_schedule_and_seeded(tmp_path) -> None:
    head, rows = _train_head(tmp_path / "a", "train.epochs=5")
    assert len(rows) == 20 and "bg_pos" in rows[0] and "neg" in rows[0]
    assert sum(r["loss"] for r in rows[-4:]) / 4 < 0.6 * rows[0]["loss"]  # measured: 0.137 / 0.270
    # psa's poly rate, per step: lr_k = 0.1 (1 - k/20)^0.9
    assert all(r["lr"] == pytest.approx(0.1 * (1 - k / 20) ** 0.9) for k, r in enumerate(rows))
    assert "teacher" not in dict(head.named_modules()) and set(head.state_dict()) == set(AffinityHead([8]).state_dict())
    again, _ = _train_head(tmp_path / "b", "train.epochs=5")
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), again.state_dict().values(), strict=True))
    # the learnt affinity separates the halves more than within them
    teacher = _HalvesTeacher()
    emb = head(teacher.features(_HalvesImages().images[:2]))
    w = disc_affinity(emb, 3).weights[0]  # (K, 8, 8); offset index of (0, 1) in the full disc is 1
    across, within = w[1, :, 3].mean(), w[1, :, 0].mean()
    assert across < 0.5 * within


def test_a_poly_run_resumed_for_more_epochs_follows_the_longer_schedule(tmp_path) -> None:
    _train_head(tmp_path / "r", "train.epochs=2")
    _, rows = _train_head(tmp_path / "r", "train.epochs=4", resume=True)
    assert [r["step"] for r in rows] == list(range(16))  # the first run's rows, then the resumed ones
    # from the first resumed step on, the rate is the 16-step schedule's (was: one step at the old final 0)
    assert all(r["lr"] == pytest.approx(0.1 * (1 - r["step"] / 16) ** 0.9) for r in rows[8:])


def test_crf_labels_and_bad_settings() -> None:
    from afford.refine.head_training import AffinityHeadConfig

    m = AffinityHeadTraining(AffinityHeadConfig(radius=3, crf=True), ["hold"], teacher=_HalvesTeacher())
    batch = {"ego": _HalvesImages().images[:2], "label": torch.zeros(2, dtype=torch.long)}
    loss = float(m.forward_train(batch, 0)["loss"].detach())
    assert math.isfinite(loss) and loss > 0
    with pytest.raises(AffordError, match="model.label_mode"):
        AffinityHeadTraining(AffinityHeadConfig(label_mode="psa"), ["hold"], teacher=_HalvesTeacher())
    with pytest.raises(AffordError, match="model.teacher: the run folder"):
        AffinityHeadTraining(AffinityHeadConfig(), ["hold"])


@pytest.mark.parametrize("settings", [dict(label_mode="alpha", alpha_low=2.0, alpha_high=16.0, crf=True),
                                      dict(label_mode="fixed", fg_threshold=0.4, bg_threshold=0.1, crf=True),
                                      dict(label_mode="fixed", fg_threshold=0.4, bg_threshold=0.1, crf=False)])
def test_head_training_targets_are_the_labels_its_settings_name(settings) -> None:
    """The loss trains on affinity_labels made with the config's own mode, thresholds and CRF (not the
    defaults): recomputed here from those settings it is the same, and other settings give another loss."""
    from afford.refine.affinity_head import pair_affinity, pair_labels
    from afford.refine.head_training import AffinityHeadConfig
    from afford.refine.labels import affinity_labels, default_crf, to_rgb255

    torch.manual_seed(0)
    m = AffinityHeadTraining(AffinityHeadConfig(radius=3, **settings), ["hold"], teacher=_HalvesTeacher())
    images = _HalvesImages().images[:2] * 0.8 + 0.1 * torch.rand(2, 3, 1, 1, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(2, dtype=torch.long)
    got = float(m.forward_train({"ego": images, "label": y}, 0)["loss"].detach())
    teacher = _HalvesTeacher()
    feats = [f.float() for f in teacher.features(images)]
    cams = teacher.predict(images, y).float()
    crf = default_crf(settings["label_mode"]) if settings["crf"] else None
    values = {k: v for k, v in settings.items() if k not in ("label_mode", "crf")}
    target = affinity_labels(cams, mode=settings["label_mode"], size=tuple(feats[0].shape[-2:]), crf=crf,
                             image=to_rgb255(images.float()) if crf is not None else None, **values)
    with torch.no_grad():
        want = float(affinity_loss(pair_affinity(m(feats), 3), *pair_labels(target, 3))["loss"])
    assert got == pytest.approx(want, rel=1e-6)
    plain = AffinityHeadTraining(AffinityHeadConfig(radius=3), ["hold"], teacher=_HalvesTeacher())
    plain.load_state_dict(m.state_dict())
    assert float(plain.forward_train({"ego": images, "label": y}, 0)["loss"].detach()) != pytest.approx(got, rel=1e-6)


def test_refiner_save_load_roundtrip(tmp_path) -> None:
    torch.manual_seed(0)
    teacher, head = _HalvesTeacher(), AffinityHead([8])
    refiner = AffinityRefiner(head, radius=3, steps=4, blend=0.5)
    images = _HalvesImages().images[:2]
    cams = teacher.predict(images, torch.zeros(2, dtype=torch.long))
    out = refiner(cams, teacher.features(images))
    loaded = load_refiner(save_refiner(refiner, tmp_path / "r"))
    assert loaded.params == refiner.params and loaded.params["affinity"] == "trained_head"
    assert torch.equal(loaded(cams, teacher.features(images)), out)
    free = AffinityRefiner(steps=16, radius=3)
    again = load_refiner(save_refiner(free, tmp_path / "f"), steps=2)
    assert again.head is None and again.params["t"] == 2
    with pytest.raises(AffordError, match="refiner.json"):
        load_refiner(tmp_path / "missing")
    with pytest.raises(AffordError, match="unknown parameter"):
        load_refiner(tmp_path / "f", gamma=3)


def test_training_free_refiner_spreads_within_the_region_only() -> None:
    """Two feature regions far apart; a CAM peak inside the left one fills the left region only."""
    feats = torch.ones(1, 4, 10, 10)
    feats[:, 0, :, 5:] = -1.0  # right half: another direction after L2 normalisation
    feats[:, :, :, :5] += 0.01 * torch.randn(1, 4, 10, 5, generator=torch.Generator().manual_seed(0))
    cams = torch.zeros(1, 20, 20)  # CAM at twice the feature resolution: resized and back
    cams[0, 8:12, 2:6] = 1.0
    refiner = AffinityRefiner(radius=3, steps=64, scale=50.0, beta=8)
    out = refiner(cams, [feats])
    assert out.shape == (1, 20, 20)
    assert out[0, :, :8].min() > 0.5  # whole left region lit
    assert out[0, :, 12:].max() < 1e-3  # right region untouched


def test_disc_affinity_same_with_and_without_autograd() -> None:
    f = torch.randn(1, 5, 6, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fast = disc_affinity(f, 3).weights
    slow = disc_affinity(f.clone().requires_grad_(), 3).weights
    assert slow.requires_grad and torch.allclose(fast, slow.detach(), atol=1e-7)
    assert torch.allclose(disc_affinity(f, 3, kind="cosine").weights, disc_affinity(f.requires_grad_(), 3, kind="cosine").weights.detach())
