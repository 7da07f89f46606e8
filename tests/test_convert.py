"""Weight-file reading and key conversion (official DINO / OpenAI CLIP -> transformers)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from afford.backbones.convert import (
    dino_to_hf_vit,
    load_checkpoint_file,
    load_strict,
    openai_text_to_hf,
    openai_visual_to_hf,
)
from afford.backbones.registry import resolve_weights
from afford.errors import AffordError


def test_dino_qkv_rows_split_into_q_k_v() -> None:
    qkv = torch.arange(12 * 4, dtype=torch.float32).reshape(12, 4)  # dim 4: rows q 0-3, k 4-7, v 8-11
    out = dino_to_hf_vit({"blocks.3.attn.qkv.weight": qkv, "blocks.3.attn.qkv.bias": torch.arange(12.0),
                          "blocks.3.norm1.weight": torch.ones(4), "pos_embed": torch.zeros(1, 5, 4),
                          "patch_embed.proj.bias": torch.zeros(4), "norm.bias": torch.zeros(4),
                          "head.last_layer.weight": torch.zeros(2)})
    assert torch.equal(out["layers.3.attention.q_proj.weight"], qkv[0:4])
    assert torch.equal(out["layers.3.attention.k_proj.weight"], qkv[4:8])
    assert torch.equal(out["layers.3.attention.v_proj.bias"], torch.arange(8.0, 12.0))
    assert "layers.3.layernorm_before.weight" in out and "embeddings.position_embeddings" in out
    assert "embeddings.patch_embeddings.projection.bias" in out and "layernorm.bias" in out
    assert "head.last_layer.weight" in out  # passed through, so a strict load reports it


def test_openai_projections_are_transposed_and_in_proj_split() -> None:
    proj = torch.randn(6, 3)
    vis = openai_visual_to_hf({"visual.proj": proj, "visual.ln_pre.weight": torch.ones(6),
                               "visual.transformer.resblocks.0.attn.in_proj_weight": torch.randn(18, 6),
                               "visual.transformer.resblocks.0.mlp.c_fc.bias": torch.zeros(24),
                               "token_embedding.weight": torch.zeros(2, 2)})
    assert torch.equal(vis["visual_projection.weight"], proj.t())
    assert vis["vision_model.encoder.layers.0.self_attn.k_proj.weight"].shape == (6, 6)
    assert "vision_model.pre_layrnorm.weight" in vis and "vision_model.encoder.layers.0.mlp.fc1.bias" in vis
    assert not any(k.startswith("token") for k in vis)
    txt, scale = openai_text_to_hf({"text_projection": proj, "logit_scale": torch.tensor(4.6),
                                    "visual.proj": proj, "vocab_size": torch.tensor(3)})
    assert torch.equal(txt["text_projection.weight"], proj.t()) and scale.item() == pytest.approx(4.6)
    assert list(txt) == ["text_projection.weight"]


def test_load_checkpoint_file_unwraps_and_upcasts(tmp_path) -> None:
    sd = {"module.backbone.cls_token": torch.ones(1, 1, 2, dtype=torch.float16),
          "module.head.mlp.weight": torch.ones(2)}
    torch.save({"teacher": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    out = load_checkpoint_file(tmp_path / "ckpt.pth")
    assert list(out) == ["cls_token"] and out["cls_token"].dtype == torch.float32
    save_file({"a.weight": torch.zeros(2)}, str(tmp_path / "m.safetensors"))
    assert list(load_checkpoint_file(tmp_path / "m.safetensors")) == ["a.weight"]


def test_unreadable_and_missing_files_raise_affordError(tmp_path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(AffordError, match="junk.pth"):
        load_checkpoint_file(tmp_path / "junk.pth")
    with pytest.raises(AffordError, match="not found"):
        load_checkpoint_file(tmp_path / "nope.pth")


def test_load_strict_lists_everything_in_one_line() -> None:
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    sd = {"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(4), "2.weight": torch.zeros(1)}
    with pytest.raises(AffordError) as err:
        load_strict(m, sd, "x.pth")
    msg = str(err.value)
    assert msg.startswith("x.pth:") and "\n" not in msg
    assert "missing keys (2): [1.bias, 1.weight]" in msg
    assert "unexpected keys (1): [2.weight]" in msg and "0.bias (4,) != (3,)" in msg
    load_strict(m, {k: torch.zeros_like(v) for k, v in m.state_dict().items()}, "ok.pth")
    assert m[0].weight.abs().sum() == 0


def test_resolve_weights(tmp_path) -> None:
    assert resolve_weights(None) == ("random", "")
    assert resolve_weights("facebook/dino-vits16") == ("hub", "facebook/dino-vits16")
    assert resolve_weights(tmp_path) == ("dir", str(tmp_path))
    with pytest.raises(AffordError):
        resolve_weights("dino_deitsmall16_pretrain.pth")  # a file that is not there
