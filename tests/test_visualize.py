"""Overlays and grids: exact blend arithmetic, colour of hot pixels, canvas geometry."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from afford.visualize import TITLE_HEIGHT, jet, overlay, save_grid, save_overlay


def test_jet_endpoints_and_monotone_hue():
    assert np.allclose(jet(np.array(0.0)), [0, 0, 0.5])  # dark blue
    assert np.allclose(jet(np.array(0.5)), [0.5, 1, 0.5])
    assert np.allclose(jet(np.array(1.0)), [0.5, 0, 0])  # dark red
    assert np.allclose(jet(np.array([0.25, 0.75])), [[0, 0.5, 1], [1, 0.5, 0]])
    c = jet(np.linspace(-0.5, 1.5, 201))  # clipped outside [0, 1]
    assert c.shape == (201, 3) and c.min() >= 0 and c.max() <= 1
    assert np.allclose(c[:50], [0, 0, 0.5]) and np.allclose(c[151:], [0.5, 0, 0])


def test_zero_heatmap_is_the_blended_original():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for alpha in (0.0, 0.3, 0.5):
        out = np.asarray(overlay(img, np.zeros((7, 7)), alpha=alpha)).astype(np.float64)
        expect = (1 - alpha) * img + alpha * np.array([0, 0, 127.5])
        assert np.abs(out - expect).max() <= 0.5 + 1e-9
    assert np.array_equal(np.asarray(overlay(Image.fromarray(img), np.zeros((3, 3)), alpha=0.0)), img)


def test_hot_pixels_turn_red_and_heatmap_is_resized():
    img = np.full((32, 32, 3), 128, np.uint8)
    heat = np.zeros((4, 4))
    heat[0, 0] = 5.0  # arbitrary CAM scale: min-maxed
    out = np.asarray(overlay(img, heat, alpha=0.8)).astype(int)
    assert out.shape == (32, 32, 3)
    r, g, b = out[0, 0]
    assert r >= 120 and r > g + 60 and r > b + 60  # jet(1) is dark red (127.5, 0, 0)
    r2, g2, b2 = out[31, 31]  # cold corner is blue-ish
    assert b2 > r2 + 60 and b2 > g2 + 60


def test_overlay_keeps_the_heatmaps_orientation_on_a_non_square_image():
    """Row r, column c of the map lands on row r, column c of the image (a transposed map would put the hot
    cell bottom-left instead of top-right)."""
    img = np.full((20, 60, 3), 128, np.uint8)  # H x W
    heat = np.zeros((2, 6))
    heat[0, -1] = 1.0  # top-right cell
    out = np.asarray(overlay(img, heat, alpha=0.8)).astype(int)
    r, g, b = out[2, 57]
    assert r > g + 60 and r > b + 60
    r2, g2, b2 = out[17, 2]  # bottom-left: cold
    assert b2 > r2 + 60


def test_grid_geometry_and_labels(tmp_path):
    tiles = [(np.full((10, 16, 3), 40 * i, np.uint8), f"aff{i}") for i in range(5)]
    path = tmp_path / "g" / "grid.png"
    grid = save_grid(tiles, path, cols=2, pad=3)
    assert grid.size == (2 * (16 + 3) + 3, 3 * (10 + TITLE_HEIGHT + 3) + 3)
    assert Image.open(path).size == grid.size
    a = np.asarray(grid)
    # tile 3 (row 1, col 1) lands at the computed offset with its own colour
    y, x = 3 + 1 * (10 + TITLE_HEIGHT + 3) + TITLE_HEIGHT, 3 + 1 * (16 + 3)
    assert np.all(a[y : y + 10, x : x + 16] == 120)
    title_strip = a[3 : 3 + TITLE_HEIGHT, 3 : 3 + 16]
    assert (title_strip < 128).any()  # some label text was drawn
    resized = save_grid(tiles, None, cols=3, cell_size=(8, 6), pad=0)
    assert resized.size == (24, 2 * (6 + TITLE_HEIGHT))
    with pytest.raises(ValueError, match="no images"):
        save_grid([], None)


def test_save_overlay_writes_file(tmp_path):
    img = Image.new("RGB", (12, 9), (10, 200, 10))
    p = save_overlay(img, np.eye(3), tmp_path / "o.png", title="hold")
    assert Image.open(p).size == (12, 9 + TITLE_HEIGHT)
    p2 = save_overlay(img, np.eye(3), tmp_path / "o2.png")
    assert Image.open(p2).size == (12, 9)
