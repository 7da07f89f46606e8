"""The HOI detection file: format, alignment with the dataset's images, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from afford.errors import AffordError
from afford.hoi.detections import read_detections, write_detections

NAMES = ("a.jpg", "b.jpg", "c.jpg")


def test_rows_are_aligned_with_the_dataset_and_round_trip(tmp_path) -> None:
    rows = {"c.jpg": [[5, 0, 1, 10, 11, 2, 3, 20, 21, 0.9], [599, 1.5, 2, 3, 4, 5, 6, 7, 8, 0.1]]}
    (tmp_path / "d.json").write_text(json.dumps(rows))
    dets = read_detections(tmp_path / "d.json", NAMES)
    assert dets[0] is None and dets[1] is None
    c = dets[2]
    assert c.hoi.tolist() == [5, 599] and c.hoi.dtype == np.int64
    assert c.boxes_h[1].tolist() == [1.5, 2, 3, 4] and c.boxes_o[0].tolist() == [2, 3, 20, 21]
    assert c.scores.tolist() == [0.9, 0.1]
    write_detections(tmp_path / "e.json", NAMES, dets)
    again = read_detections(tmp_path / "e.json", NAMES)
    assert again[0] is None and np.array_equal(again[2].boxes_o, c.boxes_o) and again[2].hoi.tolist() == [5, 599]


@pytest.mark.parametrize(("content", "message"), [
    ("[1, 2]", "expected a JSON object mapping image file names"),
    ('{"z.jpg": []}', "image 'z.jpg' is not in the dataset's file list"),
    ('{"a.jpg": [[600, 0, 0, 1, 1, 0, 0, 1, 1, 0.5]]}', "image 'a.jpg', row 0: HOI index 600 is not an integer in 0..599"),
    ('{"a.jpg": [[1.5, 0, 0, 1, 1, 0, 0, 1, 1, 0.5]]}', "HOI index 1.5 is not an integer"),
    ('{"a.jpg": [[1, 0, 0, 1, 1, 0, 0, 1, 1, NaN]]}', "row 0: non-finite value"),
    ('{"b.jpg": [[1, 0, 0, 1, 1, 0, 0, 1, 1]]}', "image 'b.jpg', row 0: expected 10 numbers"),
    ('{"b.jpg": [[1, 0, 0, 1, 1, 0, 0, 1, 1, "x"]]}', "every entry must be a number"),
    ('{"b.jpg": {"hoi": 1}}', "expected a list of rows"),
    ("{not json", "not a readable JSON detection file"),
])
def test_malformed_files_are_refused_in_one_line(tmp_path, content: str, message: str) -> None:
    (tmp_path / "d.json").write_text(content)
    with pytest.raises(AffordError) as e:
        read_detections(tmp_path / "d.json", NAMES)
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(AffordError, match="detection file not found"):
        read_detections(tmp_path / "missing.json", NAMES)
