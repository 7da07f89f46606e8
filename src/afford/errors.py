"""User-facing errors.

Anything a user can cause (a bad path, a misspelt class, a checkpoint of the wrong method)
raises :class:`AffordError` with a one-line message naming the file/field and what was
expected. The CLI prints it without a traceback and exits with status 2.
"""

from __future__ import annotations

import difflib
import pickle
import struct
from collections.abc import Iterable


class AffordError(Exception):
    """An error caused by user input, reported as one line by the CLI."""


#: What ``torch.load`` raises for a file that is not (or no longer) a torch.save file: truncated,
#: another format, a text file, bytes that look like a pickle. Not MemoryError or torch's bugs.
UNREADABLE_PICKLE: tuple[type[BaseException], ...] = (
    OSError, RuntimeError, EOFError, ValueError, AttributeError, ImportError, KeyError, IndexError, TypeError,
    struct.error, pickle.UnpicklingError,
)


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` close matches of ``name`` among ``choices`` (for 'did you mean')."""
    options = list(choices)
    by_fold = {c.casefold(): c for c in options}  # 'LOCATE' finds 'locate'
    return [by_fold[m] for m in difflib.get_close_matches(name.casefold(), list(by_fold), n=n, cutoff=0.5)]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean: a, b?)' suffix, or '' when nothing is close."""
    m = closest(name, choices)
    return f" (did you mean: {', '.join(m)}?)" if m else ""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty),
    for one-line user errors that wrap a library's multi-line message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unreadable_checkpoint(path: object, exc: BaseException, what: str = "checkpoint") -> AffordError:
    """The one line for a weights file ``torch.load(weights_only=True)`` refused: a pickled Python
    object is named (and its code is not run: torch's advice to load it with ``weights_only=False``
    is not passed on), a zip archive is told to be unzipped, anything else is a damaged file."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch colours part of its message
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        obj = f" ({found.group(1)})" if found else ""
        return AffordError(f"{path}: holds a pickled Python object{obj}, not only tensors; afford reads weights without "
                           "running code from the file: re-save them with torch.save(model.state_dict(), FILE)")
    if str(path).lower().endswith(".zip") or "inline_container" in text:
        return AffordError(f"{path}: a zip archive, not a torch.save file: unzip it and give the .pth inside")
    return AffordError(f"{path}: cannot read the {what} (truncated download or not a torch.save file: "
                       f"{first_line(exc)})")
