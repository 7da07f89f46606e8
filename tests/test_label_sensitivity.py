"""Label sensitivity: right-label against wrong-label maps on multi-affordance objects."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from afford.cli import main
from afford.config import EvalConfig
from afford.data.agd20k import AffordanceTestSet, GTCache, open_split
from afford.engine.evaluator import label_sensitivity
from afford.metrics.report import format_label_sensitivity, label_verdict, map_correlation


def test_map_correlation_edge_cases():
    a = torch.arange(16.0).view(4, 4)
    assert map_correlation(a, 2 * a + 3) == pytest.approx(1.0)
    assert map_correlation(a, -a) == pytest.approx(-1.0)
    assert map_correlation(torch.ones(4, 4), torch.full((4, 4), 7.0)) == 1.0  # two constant maps: identical
    assert map_correlation(torch.ones(4, 4), a) == 0.0


@pytest.fixture(scope="module")
def gt_by_image(synth_root):
    """Image bytes -> (label, GT) of the test item, so a fake model can 'know' the answer."""
    split = open_split(synth_root, "Seen")
    ds, gts = AffordanceTestSet(split, size=56), GTCache(split)
    return split, {ds[i]["image"].numpy().tobytes(): (ds.labels[i], gts[it]) for i, it in enumerate(ds.items)}


def _gt_map(gt: torch.Tensor) -> torch.Tensor:
    return F.interpolate(torch.as_tensor(gt).double()[None, None], size=(14, 14), mode="area")[0, 0]


def test_label_blind_map_scores_the_same_with_any_label(gt_by_image):
    split, table = gt_by_image

    def blind(images, labels):  # the right answer for the image, whatever label is asked for
        return torch.stack([_gt_map(table[x.numpy().tobytes()][1]) for x in images])

    out = label_sensitivity(blind, split, size=56, progress=False)
    assert out["n_images"] > 0 and out["map_cc"] == pytest.approx(1.0)
    assert out["right"]["KLD"] == pytest.approx(out["wrong"]["KLD"])
    assert out["right"]["SIM"] == pytest.approx(out["wrong"]["SIM"])
    assert sum(v["n"] for v in out["per_object"].values()) == out["n_images"]


def test_label_reading_map_scores_worse_with_a_wrong_label(gt_by_image):
    split, table = gt_by_image

    def reads_label(images, labels):  # GT for the image's own label, its complement for any other
        maps = []
        for x, y in zip(images, labels, strict=True):
            label, gt = table[x.numpy().tobytes()]
            g = _gt_map(gt)
            maps.append(g if int(y) == label else g.max() - g)
        return torch.stack(maps)

    out = label_sensitivity(reads_label, split, size=56, progress=False)
    assert out["right"]["KLD"] < out["wrong"]["KLD"] and out["right"]["SIM"] > out["wrong"]["SIM"]
    assert out["map_cc"] < 0
    table_md = format_label_sensitivity({"oracle": {"label_sensitivity": out}, "baseline": {}})
    assert f"| oracle | {out['n_images']} | {out['right']['KLD']:.3f} | {out['wrong']['KLD']:.3f} |" in table_md
    assert table_md.endswith("| yes |")  # the right label scores better on both: said in the last column
    assert "baseline" not in table_md  # rows without the diagnostic are left out


def test_eval_label_sensitivity_flag(tiny_run, synth_root, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(tiny_run), "--data", str(synth_root), "--json", str(out),
                 "--label-sensitivity"]) == 0
    ls = json.loads(out.read_text())["label_sensitivity"]
    assert ls["n_images"] > 0 and -1.0 <= ls["map_cc"] <= 1.0
    assert f"| {ls['right']['KLD']:.3f} | {ls['wrong']['KLD']:.3f} |" in capsys.readouterr().out
    # a baseline or a prediction folder cannot be asked about other labels: one clear error
    assert main(["eval", "--baseline", "object", "--data", str(synth_root), "--label-sensitivity"]) == 2
    assert "--label-sensitivity only applies to --checkpoint" in capsys.readouterr().err


def test_label_sensitivity_batches_by_the_eval_batch_size_and_drops_empty_gts(gt_by_image):
    split, table = gt_by_image
    sizes: list[int] = []

    def blind(images, labels):
        sizes.append(len(labels))
        return torch.stack([_gt_map(table[x.numpy().tobytes()][1]) for x in images])

    one = label_sensitivity(blind, split, EvalConfig(batch_size=5), size=56, progress=False)
    assert max(sizes) == 5 and len(sizes) > 1
    many = label_sensitivity(blind, split, EvalConfig(batch_size=64), size=56, progress=False)
    assert one["right"] == many["right"] and one["wrong"] == many["wrong"] and one["n_images"] == many["n_images"]
    # All-zero GTs are dropped when the run excludes them, as the scores do.
    gts, items = GTCache(split), AffordanceTestSet(split, size=56).items
    blank = next(it for it in items if sum(i.object == it.object for i in items) > 1)

    class OneBlank:  # the split's GTs with one of them all zero
        def __getitem__(self, it):
            return gts[it] * 0 if it.key == blank.key else gts[it]

    kept = label_sensitivity(blind, split, EvalConfig(), size=56, progress=False, gt_cache=OneBlank())
    dropped = label_sensitivity(blind, split, EvalConfig(exclude_empty_gt=True), size=56, progress=False,
                                gt_cache=OneBlank())
    assert dropped["n_images"] == kept["n_images"] - 1


def test_wrong_label_scores_average_every_other_affordance_of_the_object(gt_by_image):
    """A fake model whose map differs per wrong label: the summary (overall and per object) is, per image,
    its own label's score against the mean over each of the object's other test affordances, and the mean
    correlation of those maps with the right one; the printed row carries all five figures."""
    import numpy as np

    from afford.metrics.saliency import score

    split, table = gt_by_image

    def per_label(images, labels):
        maps = []
        for x, y in zip(images, labels, strict=True):
            label, gt = table[x.numpy().tobytes()]
            g = _gt_map(gt)
            maps.append(g if int(y) == label else torch.roll(g, shifts=2 * int(y) + 1, dims=1) + 0.05 * int(y))
        return torch.stack(maps)

    out = label_sensitivity(per_label, split, size=56, progress=False)
    ds, gts = AffordanceTestSet(split, size=56), GTCache(split)
    affs: dict[str, set] = {}
    for it in ds.items:
        affs.setdefault(it.object, set()).add(it.affordance)
    rows: dict[str, list] = {}
    for i, it in enumerate(ds.items):
        others = sorted(affs[it.object] - {it.affordance})
        if not others:
            continue
        img = ds[i]["image"][None]
        right = per_label(img, torch.tensor([split.label(it.affordance)]))[0]
        wrong = [per_label(img, torch.tensor([split.label(a)]))[0] for a in others]
        s = score([right, *wrong], [gts[it]] * (1 + len(wrong)), "standard")
        cc = np.mean([map_correlation(right, w) for w in wrong])
        rows.setdefault(it.object, []).append((float(s["KLD"][0]), float(s["KLD"][1:].mean()), float(s["SIM"][0]),
                                               float(s["SIM"][1:].mean()), cc))
    assert any(len(affs[o]) > 2 for o in rows)  # objects with several wrong labels, which the mean must average
    every = [r for rs in rows.values() for r in rs]
    mean = [float(np.mean([r[k] for r in every])) for k in range(5)]
    assert out["n_images"] == len(every)
    assert [out["right"]["KLD"], out["wrong"]["KLD"], out["right"]["SIM"], out["wrong"]["SIM"], out["map_cc"]] == \
        pytest.approx(mean, rel=1e-9)
    obj = max(rows, key=lambda o: len(affs[o]))
    per = out["per_object"][obj]
    assert per["n"] == len(rows[obj])
    assert [per["right"]["KLD"], per["wrong"]["KLD"], per["wrong"]["SIM"], per["map_cc"]] == pytest.approx(
        [float(np.mean([r[k] for r in rows[obj]])) for k in (0, 1, 3, 4)], rel=1e-9)
    line = format_label_sensitivity({"fake": {"label_sensitivity": out}}).splitlines()[-1]
    assert line == (f"| fake | {len(every)} | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} | {mean[3]:.3f} | "
                    f"{mean[4]:.3f} | {label_verdict(out)} |")
    assert label_verdict({"right": {"KLD": 2, "SIM": 0.1}, "wrong": {"KLD": 1, "SIM": 0.2}}) == "no (wrong better)"
    assert label_verdict({"right": {"KLD": 1, "SIM": 0.1}, "wrong": {"KLD": 2, "SIM": 0.2}}) == "mixed"
