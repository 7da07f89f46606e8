"""The HOI detection file: format, alignment with the dataset's images, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from afford.errors import AffordError
from afford.hoi.detections import detection_warnings, read_detections, write_detections
from afford.hoi.types import ImageDetections

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
    ('{"a.jpg": [[600, 0, 0, 1, 1, 0, 0, 1, 1, 0.5]]}',
     "image 'a.jpg', row 0: HOI index 600 is not an integer in 0..599 (indices are 0-based: a file counting from 1"),
    ('{"a.jpg": [[601, 0, 0, 1, 1, 0, 0, 1, 1, 0.5]]}', "HOI index 601 is not an integer in 0..599"),
    ('{"a.jpg": [[1, 0, 0, 1, 1, 0, 0, 1, 1, 1%s]]}' % ("0" * 400), "row 0: non-finite value"),
    ('{"a.jpg": [[1, 10, 20, 5, 30, 0, 0, 1, 1, 0.5]]}', "row 0: inverted box in [1, 10, 20, 5, 30"),
    ('{"a.jpg": [[1, 0, 0, 1, 1, 0, 9, 1, 8, 0.5]]}', "[x, y, w, h] boxes must be converted"),
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


def test_a_file_with_a_byte_order_mark_reads_as_without_it(tmp_path) -> None:
    rows = {"a.jpg": [[5, 0, 1, 10, 11, 2, 3, 20, 21, 0.9]]}
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    assert read_detections(tmp_path / "bom.json", NAMES)[0].hoi.tolist() == [5]


def _dets(hoi: list[int], box: list[float]) -> ImageDetections:
    b = np.array([box] * len(hoi), dtype=np.float64)
    return ImageDetections(hoi=np.array(hoi), boxes_h=b, boxes_o=b.copy(), scores=np.ones(len(hoi)))


def test_detection_warnings_name_what_scores_near_zero_without_an_error() -> None:
    """Few images covered, normalised boxes, boxes past the image, 1-based indices: each a warning naming
    the file; a well-formed file none; a file without any detection an error."""
    names, sizes = ["a.jpg", "b.jpg", "c.jpg"], np.array([[100, 50]] * 3)
    good = [_dets([0, 1], [1, 2, 90, 40])] * 3
    assert detection_warnings(good, names, sizes, 4, "f.json") == []

    def one(dets, **kw) -> str:
        (w,) = detection_warnings(dets, names, sizes, 4, "f.json", **kw)
        assert w.startswith("f.json: ")
        return w

    assert "detections for only 1 of the 3 images" in one([good[0], None, _dets([], [0, 0, 0, 0])])
    assert "normalised boxes?" in one([_dets([0, 1], [0.1, 0.2, 0.9, 0.4])] * 3)
    outside = one([good[0], _dets([0, 1], [1, 2, 102, 40]), good[0]])  # x2 past w + 1
    assert "1 image(s) have boxes more than 1 pixel outside the image (first: b.jpg, 100 x 50)" in outside
    assert one([good[0], _dets([0, 1], [1, 2, 90, 52]), good[0]]).startswith("f.json: 1 image(s)")  # y2 past h + 1
    assert detection_warnings([good[0], _dets([0], [1, 2, 101, 51]), good[0]], names, sizes, 4, "f") == []
    assert "never class 0: indices are 0-based" in one([_dets([1, 2, 3], [1, 2, 90, 40])] * 3)
    assert detection_warnings([_dets([1, 2, 3], [1, 2, 90, 40])] * 3, names, sizes, 4, "f", class0_in_gt=False) == []
    assert detection_warnings([_dets([1], [1, 2, 90, 40])] * 3, names, sizes, 4, "f") == []  # few classes: no claim
    with pytest.raises(AffordError, match="f.json: no detections for any of the 3 images"):
        detection_warnings([None, _dets([], [0, 0, 0, 0]), None], names, sizes, 4, "f.json")
