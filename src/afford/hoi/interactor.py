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


class PostNormFFN(nn.Module):
    """UPT's (pocket's) feed-forward block: ``LN(x + drop(W2 gelu(W1 x)))``, LayerNorm eps 1e-12."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.drop(self.ffn(x)))


class ModifiedEncoderLayer(nn.Module):
    """UPT's cooperative layer (§3.2; layout read from UPT's public ``interaction_head.py``).

    On the N instances of ONE image, with ``u = relu(W_u x)`` and ``p' = relu(W_p p)`` split into
    ``heads`` slices of ``repr_dim / heads``: per head, the logit of the pair (sender i, receiver j)
    is a linear map of ``[u_i, u_j, p'_ij]``, normalised over the senders i (the self pair
    included); the message is ``M_h(u_i ⊙ p'_ij)`` (a per-head linear map), so each instance
    receives the others' appearance gated by the pair's layout. Receiver j's messages are summed
    with those weights, the heads concatenated, ``relu``, projected back to ``dim``, then
    ``LN(x + drop(·))`` and a 4x feed-forward block. No dropout on the attention weights.
    """

    def __init__(self, dim: int, spatial_dim: int, heads: int = 8, repr_dim: int | None = None,
                 dropout: float = 0.1) -> None:
        super().__init__()
        repr_dim = repr_dim or spatial_dim
        if repr_dim % heads:
            raise AffordError(f"ModifiedEncoderLayer: representation {repr_dim} is not divisible by heads {heads}")
        self.heads, self.sub = heads, repr_dim // heads
        self.unary = nn.Linear(dim, repr_dim)
        self.pairwise = nn.Linear(spatial_dim, repr_dim)
        bound = (3 * self.sub) ** -0.5  # nn.Linear's default init, per head
        self.attn_weight = nn.Parameter(torch.empty(heads, 3 * self.sub).uniform_(-bound, bound))
        self.attn_bias = nn.Parameter(torch.empty(heads).uniform_(-bound, bound))
        bound = self.sub ** -0.5
        self.message_weight = nn.Parameter(torch.empty(heads, self.sub, self.sub).uniform_(-bound, bound))
        self.message_bias = nn.Parameter(torch.empty(heads, self.sub).uniform_(-bound, bound))
        self.aggregate = nn.Linear(repr_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.ffn = PostNormFFN(dim, 4 * dim, dropout)

    def forward(self, tokens: Tensor, spatial: Tensor) -> Tensor:
        """``(N, D)`` tokens, ``(N, N, S)`` pairwise spatial features (row = sender) -> ``(N, D)``."""
        n = tokens.shape[0]
        if spatial.shape[:2] != (n, n):
            raise AffordError(f"spatial: expected ({n}, {n}, S), got {tuple(spatial.shape)}")
        u = self.unary(tokens).relu().view(n, self.heads, self.sub)
        p = self.pairwise(spatial).relu().view(n, n, self.heads, self.sub)
        ui = u[:, None].expand(n, n, self.heads, self.sub)  # sender i
        uj = u[None, :].expand(n, n, self.heads, self.sub)  # receiver j
        logits = (torch.cat([ui, uj, p], dim=-1) * self.attn_weight).sum(-1) + self.attn_bias
        weights = logits.softmax(dim=0)  # (N, N, H): over the senders of each receiver
        messages = torch.einsum("ijhs,hts->ijht", ui * p, self.message_weight) + self.message_bias
        agg = (weights[..., None] * messages).sum(dim=0).reshape(n, -1)
        x = self.norm(tokens + self.drop(self.aggregate(agg.relu())))
        return self.ffn(x)


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


class CompetitiveLayer(nn.Module):
    """UPT's competitive layer (§3.2; pocket's ``TransformerEncoderLayer``): post-norm multi-head
    self-attention over the pair tokens of one image (dropout on the attention weights, LayerNorm
    eps 1e-12), then :class:`PostNormFFN` with a 2x GELU hidden layer (pocket's 1024 -> 2048)."""

    def __init__(self, dim: int, heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.ffn = PostNormFFN(dim, 2 * dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, P, dim)`` -> ``(B, P, dim)``."""
        m, _ = self.attn(x, x, x, need_weights=False)
        return self.ffn(self.norm(x + self.drop(m)))


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
    layer(s) over the image's pair tokens (§3.2 "hidden 1024"). ``global_dim`` is the pooled
    backbone feature's width.
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
        self.competitive = nn.ModuleList(CompetitiveLayer(pair_dim, heads, dropout)
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
