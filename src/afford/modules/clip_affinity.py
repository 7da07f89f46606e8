"""CLIP object-affinity maps of SelectiveCL (methods.md §4.2): where the prompted object is.

SelectiveCL asks a frozen CLIP, patch by patch, how much each position looks like "an item to
{affordance} with" (egocentric) and like "a person {affordance} an item" (exocentric). Those maps
choose the exocentric region that part discovery clusters, weight the egocentric descriptors,
stand in for the part when none is found, and calibrate the CAM at test time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def action_prompt(affordance: str) -> str:
    """Egocentric prompt: "an item to {aff} with", without a second "with" (``cut_with``).

    The class name keeps its underscore, as the reference does (``organize_classnames``).
    """
    return f"an item to {affordance}" + ("" if "with" in affordance else " with")


def entity_prompt(affordance: str) -> str:
    """Exocentric prompt: "a person {aff} an item"."""
    return f"a person {affordance} an item"


def cosine_map(tokens: Tensor, text: Tensor) -> Tensor:
    """Cosine between every patch embedding and its image's text feature.

    Args:
        tokens: ``(B, E, h, w)`` CLIP patch embeddings (ClearCLIP, projected).
        text: ``(B, E)`` one text feature per image.

    Returns:
        ``(B, h, w)`` raw cosines in [-1, 1].
    """
    return torch.einsum("behw,be->bhw", F.normalize(tokens, dim=1), F.normalize(text, dim=-1))


def local_mean3x3(x: Tensor) -> Tensor:
    """3x3 mean over the neighbours that exist (4 at corners, 6 on edges, 9 inside).

    ``x``: ``(..., h, w)``. This is the reference's border-clipped window (selectivecl.md §4
    step 7), i.e. average pooling without counting the padding.
    """
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:])
    out = F.avg_pool2d(flat, 3, stride=1, padding=1, count_include_pad=False)
    return out.reshape(*lead, *x.shape[-2:])


def exo_affinity(tokens: Tensor, entity: Tensor, action: Tensor, action_cos: Tensor | None = None) -> Tensor:
    """``A_exo = localmean3x3(cos(patch, t_entity)) * cos(patch, t_action)``, ``(B, h, w)``.

    ``action_cos``: ``cos(patch, t_action)`` when the caller already has it (SelectiveCL's pixel
    loss needs it too), so it is computed once."""
    if action_cos is None:
        action_cos = cosine_map(tokens, action)
    return local_mean3x3(cosine_map(tokens, entity)) * action_cos
