"""CLIP4HOI's HO interactor, built as UPT's interaction head (hoi.md §2 row "HO interactor", §3.2).

Instance tokens (DETR decoder embeddings) are refined by cooperative layers conditioned on the
pairwise spatial features of every ordered pair, fused with those features into one token per
(human, instance) pair by multi-branch fusion, then the pair tokens of an image compete in a
standard transformer encoder layer. The output pair tokens are the pairwise proposals that
CLIP4HOI's HOI decoder consumes (§2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from afford.errors import AffordError
from afford.hoi.detector import Instances
from afford.hoi.spatial import SpatialMLP, spatial_encoding


def enumerate_pairs(is_human: Tensor) -> Tensor:
    """``(N,)`` bool -> ``(P, 2)`` long: every ordered (human i, instance j), j != i, row-major.

    §3.2 "Pairs": other humans also count as objects, so two humans give both (a, b) and (b, a).
    """
    if is_human.dim() != 1:
        raise AffordError(f"is_human: expected shape (N,), got {tuple(is_human.shape)}")
    n = is_human.shape[0]
    ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = is_human.bool().cpu()[ii] & (ii != jj)
    return torch.stack([ii[keep], jj[keep]], dim=1).to(is_human.device)


def pairwise_spatial(boxes: Tensor, image_size: tuple[float, float], mlp: nn.Module) -> Tensor:
    """``(N, 4)`` boxes of a ``(h, w)`` image -> ``(N, N, S)``: ``mlp`` of the 36-d encoding of
    every ordered pair (row = first box), so the cooperative layer can look up any (i, j) (§3.2).

    ``image_size`` is ``(h, w)`` as UPT's ``image_shapes`` are; :func:`spatial_encoding` wants ``(w, h)``.
    """
    n = boxes.shape[0]
    first = boxes[:, None, :].expand(n, n, 4).reshape(-1, 4)
    second = boxes[None, :, :].expand(n, n, 4).reshape(-1, 4)
    h, w = image_size
    enc = spatial_encoding(first, second, (w, h))
    return mlp(enc).reshape(n, n, -1)


class ModifiedEncoderLayer(nn.Module):
    """UPT's cooperative layer (§3.2): attention whose logits for (i, j) come from
    ``[u_i, u_j, p_ij]`` and whose messages are ``u_i ⊙ p'_ij``, so instance tokens absorb the
    spatial layout of the image. Operates on the N instances of ONE image.

    Per head, the logit is a linear map of that head's slices of ``[u_i, u_j, p'_ij]``; softmax
    runs over j; heads are concatenated and projected, then residual + LayerNorm + FFN.
    Which side of the message is gated (``u_i``, the receiver) follows §3.2 literally and, like
    the inclusion of the self pair (i, i) and the FFN width, is **(unverified)**.
    """

    def __init__(self, dim: int, spatial_dim: int, heads: int = 8, ffn_dim: int | None = None,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise AffordError(f"ModifiedEncoderLayer: dim {dim} is not divisible by heads {heads}")
        self.heads, self.sub = heads, dim // heads
        self.unary = nn.Linear(dim, dim)
        self.pairwise = nn.Linear(spatial_dim, dim)
        self.attn_weight = nn.Parameter(torch.empty(heads, 3 * self.sub))
        self.attn_bias = nn.Parameter(torch.zeros(heads))
        nn.init.normal_(self.attn_weight, std=(3 * self.sub) ** -0.5)
        self.out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        ffn_dim = ffn_dim or 2 * dim
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, spatial: Tensor) -> Tensor:
        """``(N, D)`` tokens, ``(N, N, S)`` pairwise spatial features -> ``(N, D)``."""
        n = tokens.shape[0]
        if spatial.shape[:2] != (n, n):
            raise AffordError(f"spatial: expected ({n}, {n}, S), got {tuple(spatial.shape)}")
        u = self.unary(tokens).relu().view(n, self.heads, self.sub)
        p = self.pairwise(spatial).relu().view(n, n, self.heads, self.sub)
        ui = u[:, None].expand(n, n, self.heads, self.sub)
        uj = u[None, :].expand(n, n, self.heads, self.sub)
        logits = (torch.cat([ui, uj, p], dim=-1) * self.attn_weight).sum(-1) + self.attn_bias
        attn = self.drop(logits.softmax(dim=1))  # (N, N, H), softmax over j
        messages = ui * p  # u_i ⊙ p'_ij
        agg = (attn[..., None] * messages).sum(dim=1).reshape(n, -1)
        x = self.norm1(tokens + self.drop(self.out(agg)))
        return self.norm2(x + self.drop(self.ffn(x)))


class CooperativeLayer(nn.Module):
    """A stack of :class:`ModifiedEncoderLayer` (UPT uses 2, 8 heads; §3.2)."""

    def __init__(self, dim: int, spatial_dim: int, heads: int = 8, layers: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ModifiedEncoderLayer(dim, spatial_dim, heads, dropout=dropout) for _ in range(layers))

    def forward(self, tokens: Tensor, spatial: Tensor) -> Tensor:
        for layer in self.layers:
            tokens = layer(tokens, spatial)
        return tokens


class MultiBranchFusion(nn.Module):
    """§3.2 MBF: ``relu(sum_b fc3_b(relu(fc1_b(appearance) ⊙ fc2_b(spatial))))``.

    Each branch's hidden width is ``out_dim // branches`` and ``fc3`` maps it back to ``out_dim``,
    as in fredzzhang's MBF (verified by reading public code; §3.2 leaves the width open).
    """

    def __init__(self, appearance_dim: int, spatial_dim: int, out_dim: int, branches: int = 16) -> None:
        super().__init__()
        if out_dim % branches:
            raise AffordError(f"MultiBranchFusion: out_dim {out_dim} is not divisible by branches {branches}")
        hidden = out_dim // branches
        self.fc1 = nn.ModuleList(nn.Linear(appearance_dim, hidden) for _ in range(branches))
        self.fc2 = nn.ModuleList(nn.Linear(spatial_dim, hidden) for _ in range(branches))
        self.fc3 = nn.ModuleList(nn.Linear(hidden, out_dim) for _ in range(branches))

    def forward(self, appearance: Tensor, spatial: Tensor) -> Tensor:
        """``(..., A)`` and ``(..., S)`` (broadcastable) -> ``(..., out_dim)``."""
        total = sum(f3(torch.relu(f1(appearance) * f2(spatial)))
                    for f1, f2, f3 in zip(self.fc1, self.fc2, self.fc3, strict=True))
        return torch.relu(total)


class HOInteractor(nn.Module):
    """Instances of each image -> one pairwise proposal token per ordered (human, instance) pair.

    §2 "HO interactor" realised with §3.2: 36-d pair encodings -> :class:`SpatialMLP`;
    cooperative layers over instance tokens; pair token =
    ``[MBF([u_h, u_o], p_ho), MBF_g(global, p_ho)]`` (each ``pair_dim // 2``); competitive
    ``nn.TransformerEncoderLayer``(s) over the image's pair tokens (feed-forward width
    ``pair_dim``, §3.2 "hidden 1024"). ``global_dim`` is the pooled backbone feature's width.
    """

    def __init__(self, embed_dim: int = 256, spatial_dim: int = 512, pair_dim: int = 1024,
                 cooperative_layers: int = 2, heads: int = 8, branches: int = 16,
                 competitive_layers: int = 1, global_dim: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        if pair_dim % 2:
            raise AffordError(f"HOInteractor: pair_dim must be even, got {pair_dim}")
        self.embed_dim, self.pair_dim, self.global_dim = embed_dim, pair_dim, global_dim
        self.spatial_mlp = SpatialMLP(36, (128, 256, spatial_dim))
        self.cooperative = CooperativeLayer(embed_dim, spatial_dim, heads, cooperative_layers, dropout)
        self.mbf = MultiBranchFusion(2 * embed_dim, spatial_dim, pair_dim // 2, branches)
        self.mbf_g = MultiBranchFusion(global_dim, spatial_dim, pair_dim // 2, branches)
        self.competitive = nn.ModuleList(
            nn.TransformerEncoderLayer(pair_dim, heads, dim_feedforward=pair_dim, dropout=dropout,
                                       batch_first=True)
            for _ in range(competitive_layers))

    def _check(self, instances: Sequence[Instances], image_sizes: Sequence, global_features: Tensor) -> None:
        if not (len(instances) == len(image_sizes) == global_features.shape[0]):
            raise AffordError(f"HOInteractor: {len(instances)} instance sets, {len(image_sizes)} image "
                              f"sizes and {global_features.shape[0]} global features must match")
        if global_features.dim() != 2 or global_features.shape[1] != self.global_dim:
            raise AffordError(f"global_features: expected (B, {self.global_dim}), "
                              f"got {tuple(global_features.shape)}")
        for k, inst in enumerate(instances):
            emb = inst.embeddings
            if len(inst) == 0 and emb is None:
                continue
            if emb is None or emb.dim() != 2 or emb.shape != (len(inst), self.embed_dim):
                got = None if emb is None else tuple(emb.shape)
                raise AffordError(f"instances[{k}].embeddings: expected ({len(inst)}, {self.embed_dim}), got {got}")

    def forward(self, instances: Sequence[Instances], image_sizes: Sequence[tuple[float, float]],
                global_features: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per image ``(pairs (P, 2) long, pair_tokens (P, pair_dim))``; ``image_sizes`` are ``(h, w)``."""
        self._check(instances, image_sizes, global_features)
        out = []
        for inst, size, glob in zip(instances, image_sizes, global_features, strict=True):
            pairs = enumerate_pairs(inst.is_human)
            if len(pairs) == 0:
                empty = global_features.new_zeros(0, self.pair_dim)
                out.append((pairs, empty))
                continue
            spatial = pairwise_spatial(inst.boxes.to(global_features.dtype), size, self.spatial_mlp)
            tokens = self.cooperative(inst.embeddings, spatial)
            h, o = pairs[:, 0], pairs[:, 1]
            p_ho = spatial[h, o]
            x = torch.cat([self.mbf(torch.cat([tokens[h], tokens[o]], dim=1), p_ho),
                           self.mbf_g(glob[None], p_ho)], dim=1)
            x = x[None]
            for layer in self.competitive:
                x = layer(x)
            out.append((pairs, x[0]))
        return out
