"""Feature extraction over transformers ViTs: the shared loop, and DINO (v1) on ``ViTModel``.

We drive the transformers blocks ourselves instead of calling ``model(...)`` because the WSAG
methods need things the stock forward does not expose cheaply: the *keys* of chosen blocks
(LOCATE reads only block 12's key projection, not its output), CLS attention without forcing the
slow "eager" attention everywhere, and early exit after the deepest block that is needed.
Subclasses only say where the pieces live in each transformers model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from afford.backbones.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Features,
    dino_saliency,
    keys_to_reference_order,
    tokens_to_map,
)
from afford.errors import AffordError

#: ``own``: the family's statistics; ``imagenet``: ImageNet's whatever the family (reference quirk).
INPUT_STATS: tuple[str, ...] = ("own", "imagenet")


class VisionBackbone(nn.Module):
    """A ViT wrapped to return :class:`Features` for ``(B, 3, H, W)`` images in [0, 1].

    The backbone applies its own input normalisation (``mean``/``std``: ImageNet for DINO, CLIP's
    for CLIP), so datasets and the predictor hand every model the same [0, 1] tensor and a
    method may run two backbones with different statistics on it (SelectiveCL: DINO + CLIP).
    ``input_stats="imagenet"`` feeds ImageNet-normalised pixels whatever the family, which
    reproduces references that do so (SelectiveCL's CLIP; use it for imported checkpoints).

    Frozen unless ``trainable``: parameters do not require grad, the module stays in eval mode
    even inside a parent's ``.train()``, and the forward runs under ``no_grad`` — the WSAG
    descriptors come from a fixed DINO (methods.md §0.2). ``trainable=True`` lets the demo train
    a tiny ViT jointly with the heads.

    Args:
        model: the transformers model providing the blocks.
        name: registry name (for messages and ``repr``).
        layers: 0-based block indices (negative counts from the end, like Python lists).
        trainable: see above.
        mean, std: the input normalisation the weights expect.
        input_stats: ``"own"`` (``mean``/``std``) or ``"imagenet"`` (the reference quirk above).
        dtype: ``torch.bfloat16`` runs under autocast (outputs are returned as float32).
        return_tokens: compute ``Features.tokens``; False skips the deepest block's attention
            output and MLP, which LOCATE-style key descriptors never use.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        layers: Sequence[int] = (-1,),
        trainable: bool = False,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        dtype: torch.dtype | str | None = None,
        return_tokens: bool = True,
        input_stats: str = "own",
    ) -> None:
        super().__init__()
        if input_stats not in INPUT_STATS:
            raise AffordError(f"input_stats: expected one of {INPUT_STATS}, got {input_stats!r}")
        self.model = model
        self.name = name
        self.input_stats = input_stats
        self.mean, self.std = (IMAGENET_MEAN, IMAGENET_STD) if input_stats == "imagenet" else (mean, std)
        self.trainable = trainable
        self.return_tokens = return_tokens
        self.autocast_dtype = _parse_dtype(dtype)
        n = len(self._blocks())
        resolved = []
        for i in layers:
            j = i + n if i < 0 else i
            if not 0 <= j < n:
                raise AffordError(f"layers: block index {i} out of range for {name} with {n} blocks")
            resolved.append(j)
        if not resolved:
            raise AffordError("layers: at least one block index is needed")
        self.layers: tuple[int, ...] = tuple(resolved)
        self.requires_grad_(trainable)
        self.train(trainable)

    # ------------------------------------------------------------------ per-family hooks
    def _blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def _embed(self, pixels: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, 1 + h*w, D)`` with CLS first and (interpolated) positions."""
        raise NotImplementedError

    def _norm1(self, block: nn.Module) -> nn.Module:
        raise NotImplementedError

    def _attention(self, block: nn.Module) -> nn.Module:
        """The attention module, which owns ``q_proj``/``k_proj``/``v_proj`` Linears."""
        raise NotImplementedError

    def _run_block(self, index: int, block: nn.Module, x: Tensor) -> Tensor:
        return block(x, None)

    def _finish_tokens(self, x: Tensor) -> Tensor:
        """Block output ``(B, T, D)`` -> the returned token space (final LayerNorm by default)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ attributes
    @property
    def config(self):  # noqa: ANN201 - a transformers PretrainedConfig
        return self.model.config

    @property
    def embed_dim(self) -> int:
        """Width of the residual stream (= key descriptor width)."""
        return int(self.config.hidden_size)

    @property
    def token_dim(self) -> int:
        """Channel count of ``Features.tokens`` (the joint space for CLIP)."""
        return self.embed_dim

    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def num_layers(self) -> int:
        return len(self._blocks())

    @property
    def patch_size(self) -> int:
        p = self.config.patch_size
        return int(p[0] if isinstance(p, (tuple, list)) else p)

    def train(self, mode: bool = True) -> VisionBackbone:
        """Frozen backbones stay in eval mode whatever the parent asks (no dropout, fixed stats)."""
        return super().train(mode and self.trainable)

    def save_pretrained(self, path: str | Path) -> None:
        """Write the transformers model (config + safetensors); reload with ``weights=path``."""
        self.model.save_pretrained(str(path))

    def load_official_state_dict(self, sd: dict[str, Tensor], source: str) -> None:
        """Strictly load a state dict in official (DINO / OpenAI) or transformers naming.

        For method-checkpoint importers: e.g. ``strip_prefix(sd, "vit_model.")`` of a LOCATE
        file. Raises one AffordError naming ``source`` and every mismatched key.
        """
        from afford.backbones.convert import convert_vision_state_dict, load_strict

        load_strict(self.model, convert_vision_state_dict(sd), source)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, layers={self.layers}, trainable={self.trainable}, input_stats={self.input_stats!r}"

    # ------------------------------------------------------------------ forward
    def normalize(self, images: Tensor) -> Tensor:
        """[0, 1] images -> the normalised pixels the weights expect: ``(x - mean) / std``."""
        m = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        s = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - m) / s

    def forward(self, images: Tensor, return_tokens: bool | None = None) -> Features:
        """Normalise ``images`` in [0, 1], run up to the deepest requested block, collect :class:`Features`."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise AffordError(f"{self.name}: expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        pixels = self.normalize(images)
        want_tokens = self.return_tokens if return_tokens is None else return_tokens
        grad = torch.enable_grad() if self.trainable else torch.no_grad()
        cast = (
            torch.autocast(device_type=pixels.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with grad, cast:
            feats = self._extract(pixels, want_tokens)
        if self.autocast_dtype is not None:
            feats = _to_float(feats)
        return feats

    def _extract(self, pixels: Tensor, want_tokens: bool) -> Features:
        h, w = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        heads = self.num_heads
        deepest = max(self.layers)
        wanted = set(self.layers)
        keys: dict[int, Tensor] = {}
        tokens: dict[int, Tensor] = {}
        cls_attn = cls_token = None
        x = self._embed(pixels)
        for i, block in enumerate(self._blocks()[: deepest + 1]):
            if i in wanted:
                y = self._norm1(block)(x)
                attn = self._attention(block)
                k = attn.k_proj(y)  # (B, T, heads*d), head-major
                keys[i] = tokens_to_map(keys_to_reference_order(k[:, 1:], heads), h, w)
                if i == deepest:
                    cls_attn = _cls_attention(attn.q_proj(y[:, :1]), k, heads)[:, :, 1:]
            if i < deepest or want_tokens:
                x = self._run_block(i, block, x)
                if want_tokens and i in wanted:
                    t = self._finish_tokens(x)
                    tokens[i] = tokens_to_map(t[:, 1:], h, w)
                    if i == deepest:
                        cls_token = t[:, 0]
        assert cls_attn is not None
        cls_map = cls_attn.reshape(cls_attn.shape[0], heads, h, w)
        return Features(
            tokens=[tokens[i] for i in self.layers] if want_tokens else [],
            keys=[keys[i] for i in self.layers],
            cls_attn=cls_map,
            saliency=dino_saliency(cls_map),
            cls_token=cls_token,
            layers=self.layers,
        )


def _cls_attention(q_cls: Tensor, k: Tensor, heads: int) -> Tensor:
    """Softmax attention of the CLS query over all tokens: ``(B, heads, T)``.

    Computed directly (one query row) so no block needs the slow eager attention path.
    """
    b, t, width = k.shape
    d = width // heads
    qh = q_cls.reshape(b, heads, d).float()
    kh = k.reshape(b, t, heads, d).float()
    logits = torch.einsum("bhd,bthd->bht", qh, kh) * d**-0.5
    return logits.softmax(dim=-1)


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or dtype in (torch.float32, "float32", "fp32"):
        return None
    if dtype in (torch.bfloat16, "bfloat16", "bf16"):
        return torch.bfloat16
    if dtype in (torch.float16, "float16", "fp16"):
        return torch.float16
    raise AffordError(f"dtype: expected float32, bfloat16 or float16, got {dtype!r}")


def _to_float(f: Features) -> Features:
    """Return float32 outputs whatever precision ran inside (consumers mix them with fp32 heads)."""
    return Features(
        tokens=[t.float() for t in f.tokens],
        keys=[k.float() for k in f.keys],
        cls_attn=f.cls_attn.float(),
        saliency=f.saliency.float(),
        cls_token=None if f.cls_token is None else f.cls_token.float(),
        layers=f.layers,
    )


def dino_position_embeddings(pos: Tensor, grid_h: int, grid_w: int) -> Tensor:
    """DINO's positional embeddings ``(1, 1 + N, D)`` for a ``grid_h x grid_w`` patch grid, by DINO's
    own rule: unchanged on the native square grid, else bicubic with the scale factor
    ``(g + 0.1) / sqrt(N)`` (a scale factor samples other points than a target size does:
    transformers' resize to the size moved the keys by up to 6 at 448 px). The official code gives
    the width's factor to the rows, which only matters on non-square inputs; afford keeps rows as
    rows there."""
    n = pos.shape[1] - 1
    side = int(math.sqrt(n))
    if grid_h == grid_w == side:
        return pos
    grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side), mode="bicubic",
                         align_corners=False).to(pos.dtype)
    if tuple(grid.shape[-2:]) != (grid_h, grid_w):  # float rounding of the factor
        raise AffordError(f"DINO position embeddings: interpolated to {tuple(grid.shape[-2:])}, expected "
                          f"({grid_h}, {grid_w})")
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)], 1)


class DinoViT(VisionBackbone):
    """DINO v1 ViT (facebookresearch/dino) on ``transformers.ViTModel``.

    Positional embeddings follow DINO's interpolation (:func:`dino_position_embeddings`) for inputs
    whose grid differs from the config's; at the native size nothing is interpolated, as in the
    reference.
    """

    def _blocks(self) -> nn.ModuleList:
        return self.model.layers

    def _embed(self, pixels: Tensor) -> Tensor:
        emb = self.model.embeddings
        b, _, h, w = pixels.shape
        x = emb.patch_embeddings(pixels)
        x = torch.cat([emb.cls_token.expand(b, -1, -1), x], 1)
        x = x + dino_position_embeddings(emb.position_embeddings, h // emb.patch_size, w // emb.patch_size)
        return emb.dropout(x)

    def _norm1(self, block: nn.Module) -> nn.Module:
        return block.layernorm_before

    def _attention(self, block: nn.Module) -> nn.Module:
        return block.attention

    def _finish_tokens(self, x: Tensor) -> Tensor:
        return self.model.layernorm(x)
