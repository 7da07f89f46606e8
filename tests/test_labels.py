"""LabelSpace: what a run's class indices mean; a damaged run.json record is an error naming the file."""

from __future__ import annotations

import pytest

from afford.errors import AffordError
from afford.labels import LabelSpace


def test_round_trip_and_the_checks_of_a_label_space() -> None:
    hoi = LabelSpace("hoi", ("hold cup", "ride bicycle"), verbs=("hold", "ride"), objects=("bicycle", "cup"),
                     pairs=((0, 1), (1, 0)))
    assert LabelSpace.from_dict(hoi.to_dict()) == hoi
    aff = LabelSpace.affordances(["hold", "cut_with"])
    assert LabelSpace.from_dict(aff.to_dict()) == aff and aff.index("cut_with") == 1
    with pytest.raises(AffordError, match="unknown affordance 'cut_wth' for this model.*cut_with"):
        aff.index("cut_wth")
    with pytest.raises(AffordError, match="duplicate class name 'hold'"):
        LabelSpace.affordances(["hold", "hold"])
    with pytest.raises(AffordError, match=r"labels.pairs: \(2, 0\) outside 2 verbs x 2 objects"):
        LabelSpace("hoi", ("a", "b"), verbs=("v", "w"), objects=("o", "p"), pairs=((0, 0), (2, 0)))


@pytest.mark.parametrize("record, message", [
    ({"task": "affordance", "names": "hold"}, "labels.names: expected a list of names"),  # was 4 classes h, o, l, d
    ({"task": "affordance", "names": [1, 2]}, "labels.names: expected a list of names"),
    ({"task": "hoi", "names": ["a"], "verbs": ["v"], "objects": ["o"], "pairs": [[0, 0, 1]]}, "labels.pairs"),
    ({"task": "hoi", "names": ["a"], "verbs": ["v"], "objects": ["o"], "pairs": [[0.5, 0]]}, "labels.pairs"),
    ({"task": "hoi", "names": ["a"], "verbs": ["v"], "objects": ["o"], "pairs": [[0, 3]]}, "outside 1 verbs"),
    ({"task": "detection", "names": ["a"]}, "labels.task: expected one of"),
    ({"names": ["a"]}, "expected a mapping with 'task' and 'names'"),
])
def test_a_damaged_record_names_its_file(record, message) -> None:
    with pytest.raises(AffordError, match=r"^RUN/run\.json: ") as e:
        LabelSpace.from_dict(record, "RUN/run.json")
    assert message in str(e.value)
