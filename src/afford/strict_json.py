"""JSON that every reader accepts: Python's ``json`` writes a NaN metric as a bare ``NaN`` token,
which jq, JavaScript and most JSON libraries reject. Non-finite numbers are written as ``null``
(the reports count their NaN images separately)."""

from __future__ import annotations

import json
import math
import numbers
from typing import Any


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite real (float, numpy or 0-d tensor scalar) replaced by ``None``."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if getattr(obj, "ndim", None) == 0 and hasattr(obj, "item"):  # a 0-d tensor or array
        return finite_or_none(obj.item())
    if isinstance(obj, numbers.Real) and not isinstance(obj, (bool, numbers.Integral)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite_or_none` (``obj``), strict: a NaN that slips through is an error."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)
