"""``afford demo --quick``: the whole pipeline end to end at smoke-test size."""

from __future__ import annotations

import json

from afford.cli import main


def test_quick_demo_writes_report_metrics_and_overlays(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--quiet"]) == 0
    report = (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    rows = ["baseline: uniform", "baseline: center", "baseline: object"]
    assert all(r in metrics for r in rows) and any(k.startswith("LOCATE") for k in metrics)
    assert any("AffinityNet" in k for k in metrics)
    assert any(k.startswith("baseline: ego-only CAM") for k in metrics)  # synthagd.md's fourth baseline
    assert list((out / "overlays" / "egocam").glob("*.png"))
    for name, m in metrics.items():
        for key in ("protocol", "split", "n_images", "KLD", "SIM", "NSS", "per_affordance", "per_object", "per_pair"):
            assert key in m, (name, key)
        assert name in report and f"{m['KLD']:.3f}" in report
    n = {m["n_images"] for m in metrics.values()}
    assert len(n) == 1 and n.pop() > 0  # every row scored on the same test images
    assert list((out / "overlays" / "locate").glob("*.png"))
    # the per-affordance comparison with the whole-object map, one line per method row
    assert "## Per affordance, against the whole-object baseline" in report
    for aff in metrics["baseline: object"]["per_affordance"]:
        assert f"| {aff} | " in report
    assert any(line.startswith("- LOCATE (tiny ViT") and "affordances" in line for line in report.splitlines())
    # whether each trained row's map follows the affordance label (right- against wrong-label scores)
    assert "## Label sensitivity" in report
    for name, m in metrics.items():
        if not name.startswith("baseline: ") or "CAM" in name:
            ls = m["label_sensitivity"]
            assert f"| {name} | {ls['n_images']} | {ls['right']['KLD']:.3f} | {ls['wrong']['KLD']:.3f} |" in report
    # the centre prior is worse than the object mask on SynthAGD: GT sits on parts of objects
    assert metrics["baseline: center"]["KLD"] > metrics["baseline: object"]["KLD"]
    assert metrics["baseline: center"]["SIM"] < metrics["baseline: object"]["SIM"]
