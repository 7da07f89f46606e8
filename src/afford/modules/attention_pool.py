"""WSMA's attention pooling over the egocentric feature map (checkpoints/wsma.md §3.4, §4 step 4).

CLIP-style ``AttentionPool2d`` (mean token prepended, learned positional embedding, multi-head
attention with separate q/k/v projections and an output projection ``c_proj``), but freshly
initialised on 384-d DINO features with 64 heads of size 6 and a 1024-d output, matching the
CLIP RN50 text width. WSMA needs three things from it: the pooled global embedding (for L_clip),
the per-patch embeddings (for the pixel-text gate) and the head-averaged patch-to-patch
attention (for the inference refinement of :mod:`afford.modules.attention_refine`).
Parameter names match the official checkpoint (``positional_embedding``, ``q/k/v/c_proj``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class PoolOutput(NamedTuple):
    """``global_embed`` (B, out), ``patch_embed`` (B, h·w, out), ``attn`` (B, h·w, h·w)."""

    global_embed: torch.Tensor
    patch_embed: torch.Tensor
    attn: torch.Tensor


class AttentionPool2d(nn.Module):
    """Attention pooling with ``heads`` heads over a ``spatial`` x ``spatial`` grid of ``dim``-d features."""

    def __init__(self, spatial: int = 14, dim: int = 384, heads: int = 64, out_dim: int = 1024) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"AttentionPool2d: dim {dim} is not divisible by heads {heads}")
        self.positional_embedding = nn.Parameter(torch.randn(spatial * spatial + 1, dim) / dim**0.5)
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> PoolOutput:
        """``x``: (B, dim, h, w) with h·w + 1 == len(positional_embedding).

        Sequence = [mean token, row-major patches]; every token attends to all 1 + h·w tokens.
        The returned attention is the head average restricted to patch queries and patch keys
        (query index first), as the reference's refinement uses it.
        """
        b, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, h·w, d)
        seq = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1) + self.positional_embedding.to(x.dtype)
        n = seq.shape[1]
        hd = d // self.heads
        q = self.q_proj(seq).view(b, n, self.heads, hd).transpose(1, 2) * hd**-0.5  # (B, H, n, hd)
        k = self.k_proj(seq).view(b, n, self.heads, hd).transpose(1, 2)
        v = self.v_proj(seq).view(b, n, self.heads, hd).transpose(1, 2)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)  # (B, H, n, n)
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        out = self.c_proj(out)  # (B, n, out_dim)
        return PoolOutput(out[:, 0], out[:, 1:], attn.mean(1)[:, 1:, 1:])
