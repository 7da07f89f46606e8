"""Small heads shared by the LOCATE lineage and WSMA.

Attribute names follow the official checkpoints (checkpoints/locate.md §3.2, wsma.md §3.4) so a
released state dict loads into these modules without renaming: ``Mlp.norm/fc1/fc2`` and
``conv_bn_relu_stack`` with parameters at Sequential indices 0, 1, 3, 4.
"""

from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """LayerNorm -> Linear -> exact GELU -> Linear (LOCATE ``aff_proj``; WSMA uses 768->768->384).

    The ``fc1``/``fc2`` names matter: the reference assigns them the ×10/×20 learning rates.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim, eps=eps)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., in_dim) -> (..., out_dim)."""
        return self.fc2(self.act(self.fc1(self.norm(x))))


def conv_bn_relu_stack(dim: int, depth: int = 2, bn_momentum: float = 0.1) -> nn.Sequential:
    """``depth`` x [Conv3x3(dim, dim, pad 1), BatchNorm2d, ReLU] (LOCATE ``aff_ego_proj``)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim, momentum=bn_momentum), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def tokens_to_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h*w, D) row-major tokens -> (B, D, h, w)."""
    b, n, d = tokens.shape
    if n != h * w:
        raise ValueError(f"tokens_to_map: {n} tokens do not form a {h}x{w} grid")
    return tokens.transpose(1, 2).reshape(b, d, h, w)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B, h*w, D), row-major."""
    return x.flatten(2).transpose(1, 2)


def project_map(mlp: nn.Module, x: torch.Tensor, residual: bool = True) -> torch.Tensor:
    """Apply a token MLP to every position of a ``(B, D, h, w)`` map, keeping its shape.

    LOCATE and LoopTrans add the input back (``x + aff_proj(x)``); SelectiveCL's ``aff_proj``
    has no residual (methods.md §4.3).
    """
    h, w = x.shape[-2:]
    tokens = map_to_tokens(x)
    out = mlp(tokens)
    return tokens_to_map(tokens + out if residual else out, h, w)


def minmax(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Per-map min-max over the last two dims: ``(x - min) / (max - min + eps)``."""
    flat = x.flatten(-2)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo + eps)).view_as(x)
