"""LOCATE's prototype-guidance loss L_proto (methods.md §1.3).

The egocentric CAM of the GT class pools the *frozen* DINO descriptors into one embedding; the
loss pulls that embedding towards the part prototype found on the exocentric images
(``afford.modules.prototypes``). Because the descriptors and the prototype are constants, the
only way to lower the loss is to move the CAM onto the part.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from afford.global_batch import per_process_denominator
from afford.modules.heads import minmax


def prototype_loss(
    ego_cam_y: Tensor,
    ego_desc: Tensor,
    protos: Tensor,
    valid: Tensor,
    margin: float = 0.5,
    eps: float = 1e-10,
) -> Tensor:
    """Hinge on the cosine between the CAM-pooled descriptor and the part prototype.

    ``m = minmax(CAM_y)``, ``e = Σ desc·m / Σ m``, per valid sample
    ``max(1 − cos(e, proto) − margin, 0)``, averaged over valid samples (denominator
    ``+ 1e-15``, so a batch without prototypes gives exactly 0).

    Deliberate deviation: ``Σ m`` is clamped at 1e-12; a constant CAM (``m ≡ 0``) gives
    ``e = 0`` and ``cos = 0`` instead of the reference's nan.

    Args:
        ego_cam_y: ``(B, h, w)`` raw egocentric CAM of the GT class (carries the gradient).
        ego_desc: ``(B, D, h, w)`` frozen DINO descriptors (detached here).
        protos: ``(B, D)`` part prototypes (detached here; rows of invalid samples are ignored).
        valid: ``(B,)`` bool, samples that have a prototype.
        margin: hinge margin (LOCATE ``cel_margin``).
        eps: min-max epsilon.

    Returns:
        Scalar loss.
    """
    m = minmax(ego_cam_y, eps).unsqueeze(1)  # (B, 1, h, w)
    desc = ego_desc.detach()
    e = (desc * m).sum(dim=(-2, -1)) / m.sum(dim=(-2, -1)).clamp_min(1e-12)  # (B, D)
    cos = F.cosine_similarity(e, protos.detach().to(e.dtype), dim=-1)  # (B,)
    per = torch.relu(1 - cos - margin)
    valid = valid.bool()
    per = torch.where(valid, per, torch.zeros_like(per))
    return per.sum() / (per_process_denominator(valid.sum()) + 1e-15)  # the global batch's valid samples
