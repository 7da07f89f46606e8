"""DINOv2 on ``transformers.Dinov2Model`` with the same :class:`Features` interface as DINO.

DINOv2 differs from DINO v1 only inside the block (LayerScale after attention and MLP) and in
its patch size (14); keys, CLS attention and saliency are read the same way, so the methods can
swap the backbone by name.
"""

from __future__ import annotations

from torch import Tensor, nn

from afford.backbones.vit import VisionBackbone


class DinoV2ViT(VisionBackbone):
    """DINOv2 ViT. Its position grid (37x37 for 518 px) is interpolated to the input grid."""

    def _blocks(self) -> nn.ModuleList:
        return self.model.encoder.layer

    def _embed(self, pixels: Tensor) -> Tensor:
        return self.model.embeddings(pixels)

    def _norm1(self, block: nn.Module) -> nn.Module:
        return block.norm1

    def _attention(self, block: nn.Module) -> nn.Module:
        return block.attention

    def _finish_tokens(self, x: Tensor) -> Tensor:
        return self.model.layernorm(x)
