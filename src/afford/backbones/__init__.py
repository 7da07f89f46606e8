"""Vision backbones and CLIP text encoders on transformers (bottom layer of afford).

``create_backbone(name, weights=None, layers=(-1,), trainable=False, **overrides)`` returns a
module whose call on ``(B, 3, H, W)`` images in [0, 1] (it normalises them itself) gives :class:`Features` (tokens, keys
in the DINO reference channel order, CLS attention, DINO saliency). ``create_text_encoder``
covers the CLIP text side (trainable prompts: :mod:`afford.modules.prompts`). Official DINO/OpenAI files are converted on
load; ``weights=None`` builds a random model without network access.
"""

from afford.backbones.clip_text import CLIPTextEncoder
from afford.backbones.features import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Features,
    dino_saliency,
    keys_to_reference_order,
)
from afford.backbones.registry import (
    BACKBONES,
    TEXT_ENCODERS,
    create_backbone,
    create_text_encoder,
    list_backbones,
    list_text_encoders,
)
from afford.backbones.tokenizer import ClipBPETokenizer
from afford.backbones.vit import VisionBackbone

__all__ = [
    "BACKBONES",
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TEXT_ENCODERS",
    "CLIPTextEncoder",
    "ClipBPETokenizer",
    "Features",
    "VisionBackbone",
    "create_backbone",
    "create_text_encoder",
    "dino_saliency",
    "keys_to_reference_order",
    "list_backbones",
    "list_text_encoders",
]
