"""CLIP4HOI-style HOI decoder: pair tokens read CLIP image tokens (hoi.md §2, unverified).

§2 reconstructs the decoder as pairwise tokens (queries) cross-attending to frozen CLIP ViT
tokens and ending in CLIP's joint space, so they can be scored against the prompt features
(§4). Layer count and union-box masking are among §2's open questions, hence both are options.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from afford.errors import AffordError


def union_mask(boxes_h: Tensor, boxes_o: Tensor, grid_hw: tuple[int, int],
               image_size: tuple[float, float]) -> Tensor:
    """``(B, P, 4)`` xyxy pixel boxes -> ``(B, P, h*w)``: patch centre inside the pair's union box.

    Patch ``(i, j)`` (row-major, ViT order) has centre ``((j + 0.5) W / w, (i + 0.5) H / h)`` for an
    image of size ``(W, H)``; "inside" is ``x1 <= cx < x2`` and ``y1 <= cy < y2``.
    """
    if boxes_h.dim() != 3 or boxes_h.shape[-1] != 4 or boxes_h.shape != boxes_o.shape:
        raise AffordError(f"union_mask: boxes_h {tuple(boxes_h.shape)} and boxes_o {tuple(boxes_o.shape)} "
                          "must both be (B, P, 4)")
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    if gh <= 0 or gw <= 0 or min(image_size) <= 0:
        raise AffordError(f"union_mask: grid {grid_hw} and image size {image_size} must be positive")
    dev, dt = boxes_h.device, boxes_h.dtype
    cx = (torch.arange(gw, device=dev, dtype=dt) + 0.5) * (float(image_size[0]) / gw)
    cy = (torch.arange(gh, device=dev, dtype=dt) + 0.5) * (float(image_size[1]) / gh)
    lo = torch.minimum(boxes_h[..., :2], boxes_o[..., :2])
    hi = torch.maximum(boxes_h[..., 2:], boxes_o[..., 2:])
    in_x = (cx >= lo[..., 0:1]) & (cx < hi[..., 0:1])  # (B, P, w)
    in_y = (cy >= lo[..., 1:2]) & (cy < hi[..., 1:2])  # (B, P, h)
    return (in_y[..., :, None] & in_x[..., None, :]).flatten(-2)


def cross_attention_mask(union: Tensor, has_cls: bool) -> Tensor:
    """Union mask -> the ``(B, P, T)`` mask a query uses (True = may attend).

    With ``has_cls`` a leading CLS column is added, hidden, so a masked query reads only its
    union patches. A query whose union covers no patch centre (a tiny box) would attend to
    nothing (NaN); it falls back to all tokens, CLS included.
    """
    if has_cls:
        union = torch.cat([union.new_zeros(*union.shape[:-1], 1), union], dim=-1)
    empty = ~union.any(dim=-1, keepdim=True)
    return union | empty


class _Attention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention`` with a boolean mask."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        if dim % n_heads:
            raise AffordError(f"decoder: dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor, mem: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

        o = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(mem)), heads(self.v(mem)),
                                           attn_mask=None if mask is None else mask[:, None])
        return self.out(o.transpose(1, 2).reshape(b, n, d))


class PairDecoderLayer(nn.Module):
    """Pre-norm: self-attention over pairs, cross-attention to image tokens, FFN; residual each."""

    def __init__(self, dim: int, n_heads: int, ffn_mult: int = 4) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = _Attention(dim, n_heads)
        self.cross_attn = _Attention(dim, n_heads)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))

    def forward(self, x: Tensor, mem: Tensor, self_mask: Tensor | None, cross_mask: Tensor | None) -> Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, self_mask)
        x = x + self.cross_attn(self.norm2(x), mem, cross_mask)
        return x + self.ffn(self.norm3(x))


class PairDecoder(nn.Module):
    """``(B, P, dim)`` pair tokens + ``(B, T, clip_dim)`` CLIP tokens -> ``(B, P, clip_dim)``.

    Image tokens are normalised and projected to ``dim`` once (keys/values of every layer);
    the output is projected to ``clip_dim``, CLIP's joint space. Note that self-attention lets a
    query see what other pairs read, so union masking isolates a query only from patches that
    no pair of its image attends to.
    """

    def __init__(self, dim: int, n_layers: int, n_heads: int, clip_dim: int) -> None:
        super().__init__()
        if n_layers < 1:
            raise AffordError(f"decoder: n_layers must be >= 1, got {n_layers}")
        self.dim, self.clip_dim = dim, clip_dim
        self.memory = nn.Sequential(nn.LayerNorm(clip_dim), nn.Linear(clip_dim, dim))
        self.layers = nn.ModuleList(PairDecoderLayer(dim, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, clip_dim)

    def forward(self, pairs: Tensor, image_tokens: Tensor, union: Tensor | None = None,
                has_cls: bool = False, pair_valid: Tensor | None = None) -> Tensor:
        """Decode; ``union`` ``(B, P, h*w)`` from :func:`union_mask` turns on masked cross-attention.

        ``has_cls``: ``image_tokens`` start with CLIP's CLS token (hidden from masked queries).
        ``pair_valid`` ``(B, P)`` bool: padded pairs are not attended to by the others.
        """
        if pairs.dim() != 3 or pairs.shape[-1] != self.dim:
            raise AffordError(f"decoder: pairs must be (B, P, {self.dim}), got {tuple(pairs.shape)}")
        if image_tokens.dim() != 3 or image_tokens.shape[-1] != self.clip_dim or image_tokens.shape[0] != pairs.shape[0]:
            raise AffordError(f"decoder: image tokens must be (B={pairs.shape[0]}, T, {self.clip_dim}), "
                              f"got {tuple(image_tokens.shape)}")
        cross = None
        if union is not None:
            n_patch = image_tokens.shape[1] - int(has_cls)
            if union.shape != (*pairs.shape[:2], n_patch) or union.dtype != torch.bool:
                raise AffordError(f"decoder: union mask must be bool {(*pairs.shape[:2], n_patch)}, "
                                  f"got {union.dtype} {tuple(union.shape)}")
            cross = cross_attention_mask(union, has_cls).to(pairs.device)
        self_mask = None
        if pair_valid is not None:
            eye = torch.eye(pairs.shape[1], dtype=torch.bool, device=pairs.device)
            self_mask = pair_valid.to(pairs.device)[:, None, :] | eye
        mem = self.memory(image_tokens)
        x = pairs
        for layer in self.layers:
            x = layer(x, mem, self_mask, cross)
        return self.proj(self.norm(x))
