"""LoopTrans's ACSeg-style cluster module (methods.md §3.6, checkpoints/looptrans.md §3.2).

A few learnable tokens read the image's pixel descriptors through cross-attention; each pixel
then belongs to the token it is most similar to (cosine). LoopTrans uses the argmax as an
unsupervised segmentation from which it picks the pseudo-mask of the affordance region.

Attribute names equal the released ``cluster_{seen,unseen}.pth`` so they load without renaming.

The reference forward has a quirk: the query given to both attentions is built once from the
token embeddings before the layer loop and never refreshed, so every layer attends with the
initial embeddings (the self-attention does not even see the image); only the residual stream
accumulates the layer outputs. The released weights reproduce only with that forward, so it is
the default (``stale_queries=True``); ``False`` is the forward the architecture describes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FeedForward(nn.Module):
    """Linear -> GELU -> Dropout -> Linear -> Dropout (``net.0`` and ``net.3`` hold weights)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ClusterModule(nn.Module):
    """``num_tokens`` cluster tokens refined over ``num_layers`` [cross-attn, self-attn, FFN, LN].

    Args:
        dim: descriptor width (384 for DINO ViT-S/16 keys).
        num_tokens: clusters (4 in LoopTrans).
        num_layers / num_heads: 8 / 8 in the release.
        stale_queries: the reference forward (see the module docstring).
    """

    def __init__(self, dim: int = 384, num_tokens: int = 4, num_layers: int = 8, num_heads: int = 8,
                 stale_queries: bool = True) -> None:
        super().__init__()
        self.stale_queries = stale_queries
        self.tokens = nn.Embedding(num_tokens, dim)
        self.cross_attn_layers = nn.ModuleList(
            [nn.MultiheadAttention(dim, num_heads, batch_first=True) for _ in range(num_layers)])
        self.self_attn_layers = nn.ModuleList(
            [nn.MultiheadAttention(dim, num_heads, batch_first=True) for _ in range(num_layers)])
        self.norm_layers = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_layers)])
        self.ffn_layers = nn.ModuleList([FeedForward(dim, 4 * dim) for _ in range(num_layers)])

    @property
    def num_tokens(self) -> int:
        return self.tokens.num_embeddings

    def cluster_tokens(self, pixels: Tensor) -> Tensor:
        """Final tokens ``(B, K, D)`` for pixel descriptors ``(B, N, D)``."""
        b = pixels.shape[0]
        queries = self.tokens.weight.unsqueeze(0).expand(b, -1, -1)
        x = queries
        for cross, self_attn, ffn, norm in zip(self.cross_attn_layers, self.self_attn_layers,
                                               self.ffn_layers, self.norm_layers, strict=True):
            q = queries if self.stale_queries else x
            x = x + cross(q, pixels, pixels, need_weights=False)[0]
            q = queries if self.stale_queries else x
            x = x + self_attn(q, q, q, need_weights=False)[0]
            x = norm(x + ffn(x))
        return x

    def forward(self, pixels: Tensor) -> Tensor:
        """Assignment scores ``(B, N, K)`` = cos(pixel, token) + 1 (no clamp, no softmax).

        ``pixels``: ``(B, N, D)`` descriptors, or a ``(B, D, h, w)`` map (row-major tokens).
        """
        if pixels.dim() == 4:
            pixels = pixels.flatten(2).transpose(1, 2)
        tokens = self.cluster_tokens(pixels)
        return torch.einsum("bnd,bkd->bnk", F.normalize(pixels, dim=-1), F.normalize(tokens, dim=-1)) + 1

    @torch.no_grad()
    def assign(self, pixels: Tensor) -> Tensor:
        """Cluster index per pixel, ``(B, N)`` (the argmax LoopTrans's losses consume)."""
        return self(pixels).argmax(-1)
