"""What a vision backbone returns, and the small tensor helpers every method shares.

The WSAG methods (LOCATE, WSMA, LoopTrans, SelectiveCL) all read the same things from a frozen
ViT: the attention *keys* of one or two blocks in the DINO reference channel order, the last
block's CLS->patch attention, and a binary "DINO saliency" map derived from it (methods.md
§0.2). Computing these once, in one place, keeps the methods thin and the orderings consistent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

#: ImageNet normalisation (DINO, DINOv2, and the tensor SelectiveCL feeds CLIP as well).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: OpenAI CLIP normalisation.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: Heads averaged by the DINO saliency (LOCATE `models/locate.py`, methods.md §0.2).
SALIENCY_HEADS: tuple[int, ...] = (0, 1, 3)


@dataclass
class Features:
    """Per-image outputs of a vision backbone.

    Attributes:
        tokens: one ``(B, D, h, w)`` map per requested layer (same order as ``layers``): the
            block output after the model's final LayerNorm (DINO ``get_intermediate_layers``
            convention); for CLIP also ``post_layernorm`` + projection, so ``D`` is the joint
            embedding width. Empty when the backbone was asked not to compute tokens.
        keys: one ``(B, heads*d, h, w)`` map per requested layer: the attention keys of that
            block with channel ``c = d_index * heads + head`` (head-minor, the DINO reference
            order that released LOCATE/WSMA heads were trained on).
        cls_attn: ``(B, heads, h, w)`` softmax attention of the CLS query to each patch in the
            deepest requested block (the CLS->CLS entry is the missing mass of each row).
        saliency: ``(B, h, w)`` binary float DINO saliency computed from ``cls_attn``.
        cls_token: ``(B, D)`` CLS output of the deepest requested block (normalised like
            ``tokens``), or None when tokens were not computed.
        layers: the resolved, non-negative block indices, in request order.
    """

    tokens: list[Tensor]
    keys: list[Tensor]
    cls_attn: Tensor
    saliency: Tensor
    cls_token: Tensor | None = None
    layers: tuple[int, ...] = field(default_factory=tuple)


def keys_to_reference_order(k: Tensor, num_heads: int) -> Tensor:
    """Reorder head-major key channels ``(..., heads*d)`` to the DINO reference order.

    Transformers' key Linear writes head ``h`` to channels ``h*d .. h*d+d-1``. The reference
    descriptor is ``desc[..., j*heads + h] = K[h, j]`` (locate.md §4 step 4), so the within-head
    index must become the slow one. A pure permutation: no values change.
    """
    *lead, width = k.shape
    head_dim = width // num_heads
    return k.reshape(*lead, num_heads, head_dim).transpose(-1, -2).reshape(*lead, width)


def tokens_to_map(x: Tensor, h: int, w: int) -> Tensor:
    """``(B, h*w, D)`` row-major patch tokens -> ``(B, D, h, w)`` (token t at (t // w, t % w))."""
    b, n, d = x.shape
    if n != h * w:
        raise ValueError(f"expected {h * w} patch tokens, got {n}")
    return x.transpose(1, 2).reshape(b, d, h, w)


def dino_saliency(cls_attn: Tensor, heads: tuple[int, ...] = SALIENCY_HEADS, eps: float = 1e-12) -> Tensor:
    """Binary DINO saliency from ``(B, heads, h, w)`` CLS attention (methods.md §0.2).

    Each head is binarised at its own spatial mean, the heads ``heads`` are averaged (all heads
    when the model has fewer than ``max(heads)+1``, e.g. tiny test models), the result is
    min-max normalised per image and thresholded at its mean. Returns ``(B, h, w)`` float {0,1}.
    """
    a = cls_attn.float()
    binary = (a > a.mean(dim=(-2, -1), keepdim=True)).float()
    idx = list(heads) if a.shape[1] > max(heads) else list(range(a.shape[1]))
    sal = binary[:, idx].mean(dim=1)
    lo = sal.amin(dim=(-2, -1), keepdim=True)
    hi = sal.amax(dim=(-2, -1), keepdim=True)
    sal = (sal - lo) / (hi - lo + eps)
    return (sal > sal.mean(dim=(-2, -1), keepdim=True)).float()
