"""Latency of ``afford app`` from a click to the rendered heatmap, at a paper-shape model.

A run of ``--method`` (default LOCATE: DINO ViT-S/16 at 224 px, AGD20K Seen's 36 classes) with
random weights is written to a temporary folder (no downloads), ``afford app`` serves it, and
headless Chromium (Debian's, through Playwright) uploads a 640x480 photo-sized JPEG, chooses an
affordance and clicks *Ground*. Timed from the click to the heatmap image drawn in the page: the
first click (which builds the predictor), then the median of ``--repeats`` clicks on alternating
affordances, and "all" (every class's map and the grid). Beside them, in the same run, the
predictor alone in this process (``Predictor.set_image`` + ``predict``) for the page's overhead.

Usage::

    python benchmarks/bench_app.py [--method locate] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_random_run(method: str, out: Path) -> Path:
    """A loadable run of ``method`` at its paper architecture with random weights."""
    from afford.checkpoint import WEIGHTS, save_weights, write_run_info
    from afford.config import build_config
    from afford.data.classes import SEEN_AFFORDANCES
    from afford.factory import create_method
    from afford.labels import LabelSpace

    cfg = build_config(method)
    model = create_method(method, cfg.model, SEEN_AFFORDANCES)
    out.mkdir(parents=True)
    write_run_info(out, cfg, LabelSpace.affordances(SEEN_AFFORDANCES))
    save_weights(model, out / WEIGHTS)
    return out


def main() -> None:
    from playwright.sync_api import sync_playwright

    from afford.app.browser import INSTALL_HINT, app_server, choose, find_chromium, launch, rendered
    from afford.data.classes import SEEN_AFFORDANCES
    from afford.predictor import Predictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="locate")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit(f"no Chromium: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="afford-bench-app-") as tmp:
        root = Path(tmp)
        run = write_random_run(a.method, root / a.method)
        image = root / "photo.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(image, quality=90)
        # consecutive clicks ask for different affordances: the page's image changes with each answer
        affs = [SEEN_AFFORDANCES[i % 3] for i in range(a.repeats + 1)]

        pred = Predictor(run)
        alone = []
        for aff in affs:
            t0 = time.perf_counter()
            pred.set_image(image)
            pred.predict(aff)
            alone.append(time.perf_counter() - t0)

        clicks: list[float] = []
        with app_server([run], root / "server.log") as url, sync_playwright() as p:
            browser = launch(p, chromium)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="networkidle")
            page.set_input_files("#aff-upload input[type=file]", str(image))
            src = None
            for aff in [*affs, "all"]:
                choose(page, "aff-affordance", aff)
                t0 = time.perf_counter()
                page.click("#aff-run")
                rendered(page, "#aff-result img", after=src)
                clicks.append(time.perf_counter() - t0)
                src = page.locator("#aff-result img").get_attribute("src")
            browser.close()
    med = statistics.median(clicks[1:-1])
    print(f"afford app, {a.method} at its paper shape (random weights, {len(SEEN_AFFORDANCES)} classes), "
          f"a 640x480 JPEG, headless Chromium on this machine:")
    print(f"  first click (builds the predictor)      {clicks[0]:.2f} s")
    print(f"  click to rendered heatmap, median of {len(affs) - 1}  {med:.2f} s")
    print(f"  predictor alone (set_image + predict)    {statistics.median(alone):.2f} s  "
          f"(page overhead {med - statistics.median(alone):+.2f} s)")
    print(f"  'all' ({len(SEEN_AFFORDANCES)} maps and the grid)          {clicks[-1]:.2f} s")


if __name__ == "__main__":
    main()
