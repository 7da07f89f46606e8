"""CLIP ViT image tower on ``transformers.CLIPVisionModelWithProjection``, with ClearCLIP.

SelectiveCL (methods.md §4.1) needs dense CLIP patch embeddings in the joint image-text space.
Plain CLIP patch tokens are poorly localised; ClearCLIP fixes this by replacing the last block
with q-q attention and dropping its residual and MLP. Every token then goes through
``post_layernorm`` and the visual projection, so ``Features.tokens`` is ``(B, E, h, w)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from afford.backbones.features import CLIP_MEAN, CLIP_STD
from afford.backbones.vit import VisionBackbone


class CLIPViT(VisionBackbone):
    """CLIP image tower returning projected dense tokens.

    Args (beyond :class:`VisionBackbone`):
        clearclip: compute the model's last block as ClearCLIP (``softmax(q q^T d^-0.5) v``,
            ``out_proj``, no residual, no MLP) — SelectiveCL's ``model_type='ClearCLIP'``.
            Only the last block changes; keys and CLS attention stay the standard ones.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        layers: Sequence[int] = (-1,),
        trainable: bool = False,
        mean: tuple[float, float, float] = CLIP_MEAN,
        std: tuple[float, float, float] = CLIP_STD,
        dtype: torch.dtype | str | None = None,
        return_tokens: bool = True,
        input_stats: str = "own",
        clearclip: bool = False,
    ) -> None:
        super().__init__(model, name, layers, trainable, mean, std, dtype, return_tokens, input_stats)
        self.clearclip = clearclip

    @property
    def token_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def _blocks(self) -> nn.ModuleList:
        return self.model.vision_model.encoder.layers

    def _embed(self, pixels: Tensor) -> Tensor:
        vm = self.model.vision_model
        return vm.pre_layrnorm(vm.embeddings(pixels, interpolate_pos_encoding=True))

    def _norm1(self, block: nn.Module) -> nn.Module:
        return block.layer_norm1

    def _attention(self, block: nn.Module) -> nn.Module:
        return block.self_attn

    def _run_block(self, index: int, block: nn.Module, x: Tensor) -> Tensor:
        if self.clearclip and index == self.num_layers - 1:
            return clearclip_block(block, x, self.num_heads)
        return block(x, None)

    def _finish_tokens(self, x: Tensor) -> Tensor:
        return self.model.visual_projection(self.model.vision_model.post_layernorm(x))


def clearclip_block(block: nn.Module, x: Tensor, num_heads: int) -> Tensor:
    """ClearCLIP last block: ``out_proj(softmax(q q^T d^-0.5) v)`` of ``layer_norm1(x)``.

    The key projection is unused and the result *replaces* ``x`` (no residual, no MLP),
    following SelectiveCL's ``ignore_residual=True`` (selectivecl.md §4 step 3).
    """
    attn = block.self_attn
    y = block.layer_norm1(x)
    b, t, width = y.shape
    d = width // num_heads
    q = attn.q_proj(y).reshape(b, t, num_heads, d).transpose(1, 2)
    v = attn.v_proj(y).reshape(b, t, num_heads, d).transpose(1, 2)
    weights = (q @ q.transpose(-1, -2) * d**-0.5).softmax(dim=-1)
    o = (weights @ v).transpose(1, 2).reshape(b, t, width)
    return attn.out_proj(o)
