"""benchmarks/diagnose_locate_parts.py: the bound and the exocentric probe behind the demo's analysis."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def diag():
    spec = importlib.util.spec_from_file_location("diagnose_locate_parts", ROOT / "benchmarks" / "diagnose_locate_parts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_true_part_at_feature_resolution_beats_the_object_map(diag, synth_root):
    # SynthAGD's GT lies on parts: a perfect part map, even pooled to the CAM grid, must beat the
    # whole-object map pooled the same way (else the benchmark could not separate part from object).
    rows = diag.bound(synth_root, "Seen", grid=7)
    part, obj = rows["part mask at 7x7"], rows["object mask at 7x7"]
    assert part["KLD"] < obj["KLD"] and part["SIM"] > obj["SIM"]
    assert all(math.isfinite(r["KLD"]) for r in rows.values())


def test_exo_probe_reports_train_and_held_out_accuracy(diag, synth_root):
    rows = diag.exo_probe(synth_root, "Seen", "locate_synthagd_demo",
                          ["data.test_size=56", "train.batch_size=4"], epochs=2, lr=0.01, seed=0)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in ("train_acc", "held_out_acc"))
