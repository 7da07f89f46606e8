"""Which exocentric images go with a training sample (methods.md §1.4, §2.3, §9).

Pure functions of (group size, anchor position, generator), so they can be tested exhaustively
and so the reference crash on a folder of exactly 3 images (CVAG ``randint(0, -1)``,
methods.md §5.3) cannot come back.
"""

from __future__ import annotations

import hashlib

import torch

#: Named by behaviour, not by the method that introduced them: ``anchor_plus_random`` (LOCATE,
#: and LoopTrans/SelectiveCL after it), ``consecutive_window`` (WSMA).
SAMPLINGS: tuple[str, ...] = ("anchor_plus_random", "consecutive_window")


def view_generator(seed: int, name: str, view: int) -> torch.Generator:
    """The generator of view ``view`` of the image ``name``: the same crop and flip in every epoch
    and every sample that shows that image (what a frozen-feature cache can reuse)."""
    digest = hashlib.blake2b(f"view:{seed}:{name}:{view}".encode(), digest_size=8).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return g


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator seeded from (seed, epoch, index) only.

    Hashing (rather than seed + index) keeps neighbouring samples and epochs decorrelated, and
    because nothing depends on which worker loads a sample, or in which order, a resumed run
    redraws exactly the same crops and partners.
    """
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return g


def anchor_plus_random_indices(n: int, anchor: int, n_exo: int, generator: torch.Generator) -> list[int]:
    """``anchor_plus_random`` (LOCATE): the anchor plus ``n_exo - 1`` other images of its folder.

    Partners are distinct from each other and from the anchor when the folder holds more than
    ``n_exo`` images; otherwise (3 or fewer at LOCATE's ``n_exo = 3``) they are drawn with
    replacement from the whole folder, as LOCATE's loader does (methods.md §1.4).
    """
    if not 0 <= anchor < n:
        raise IndexError(f"anchor {anchor} outside a folder of {n} images")
    k = n_exo - 1
    if k <= 0:
        return [anchor]
    if n > n_exo:
        others = torch.randperm(n - 1, generator=generator)[:k].tolist()
        partners = [o + (o >= anchor) for o in others]  # skip over the anchor's position
    else:
        partners = torch.randint(0, n, (k,), generator=generator).tolist()
    return [anchor, *partners]


def consecutive_window_indices(n: int, n_exo: int, generator: torch.Generator) -> list[int]:
    """``consecutive_window`` (WSMA): ``n_exo`` consecutive files (sorted order) from a random start.

    The start is drawn uniformly among the windows that fit (the reference's ``randint(0, n - 4)``
    never draws the last one); a folder with fewer than ``n_exo`` images is used whole and padded
    by repeating its last image ([0, 1] -> [0, 1, 1]), as the reference loader pads. The anchor is
    not necessarily in the window, as in the reference.
    """
    if n <= 0:
        raise IndexError("empty exocentric folder")
    if n < n_exo:
        return [min(i, n - 1) for i in range(n_exo)]
    start = int(torch.randint(0, n - n_exo + 1, (1,), generator=generator).item())
    return list(range(start, start + n_exo))
