"""Files afford writes are strict JSON: a NaN metric is null, never the bare NaN token."""

import json

import numpy as np
import pytest
import torch

from afford import checkpoint as ckpt
from afford import strict_json


def _strict_load(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_become_null_and_the_rest_is_kept():
    obj = {"kld": float("nan"), "sim": 0.25, "n": 3, "ok": True, "name": "x",
           "rows": [np.float32("inf"), np.float64(-np.inf), np.float32(0.5), torch.tensor(float("nan")),
                    torch.tensor(2.0), (1, float("-inf"))]}
    back = _strict_load(strict_json.dumps(obj))
    assert back == {"kld": None, "sim": 0.25, "n": 3, "ok": True, "name": "x",
                    "rows": [None, None, 0.5, None, 2.0, [1, None]]}
    with pytest.raises(ValueError, match="NaN"):
        _strict_load(json.dumps({"kld": float("nan")}))  # what the writers produced before


def test_run_files_are_strict(tmp_path):
    path = tmp_path / "summary.json"
    ckpt.write_json(path, {"test": {"nss": float("nan"), "kld": 1.5}})
    assert _strict_load(path.read_text()) == {"test": {"nss": None, "kld": 1.5}}
