"""CLIP text tower, tokenizers and prompts, against an independent OpenAI-format reference."""

from __future__ import annotations

import gzip
import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from afford.backbones import ClipBPETokenizer, create_text_encoder
from afford.backbones.tokenizer import bytes_to_unicode
from afford.errors import AffordError
from afford.modules.prompts import PromptLearner, plain_prompts

torch.manual_seed(0)


class RefTextCLIP(nn.Module):
    """OpenAI CLIP text tower with its state-dict names (wsma.md §3.2), plain torch.

    Pre-LN blocks with ``nn.MultiheadAttention`` (fused ``in_proj``), causal mask, QuickGELU,
    ``ln_final``, EOT pooling at the largest id, ``x @ text_projection``.
    """

    def __init__(self, vocab: int = 514, width: int = 64, heads: int = 4, layers: int = 2, out: int = 64) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(77, width) * 0.1)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList()
        for _ in range(layers):
            blk = nn.Module()
            blk.attn = nn.MultiheadAttention(width, heads, batch_first=True)
            blk.ln_1, blk.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
            blk.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), c_proj=nn.Linear(4 * width, width)))
            self.transformer.resblocks.append(blk)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, out) * width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(3.0))
        with torch.no_grad():
            for name, p in self.named_parameters():
                if "ln_" in name:
                    p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
                elif name.endswith("bias"):
                    p.normal_(0, 0.1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding
        mask = torch.full((77, 77), float("-inf")).triu(1)
        for blk in self.transformer.resblocks:
            y = blk.ln_1(x)
            x = x + blk.attn(y, y, y, attn_mask=mask, need_weights=False)[0]
            h = blk.mlp.c_fc(blk.ln_2(x))
            x = x + blk.mlp.c_proj(h * torch.sigmoid(1.702 * h))
        x = self.ln_final(x)
        return x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ self.text_projection


TEXTS = ["an item to cut with", "a person hold an item", "X X X X sit on."]


def test_openai_plain_state_dict_matches_reference(tmp_path) -> None:
    ref = RefTextCLIP().eval()
    sd = dict(ref.state_dict())
    sd.update({"visual.conv1.weight": torch.zeros(1), "context_length": torch.tensor(77)})  # ignored
    path = tmp_path / "RN50_tiny.pt"
    torch.save({k: v.half() if k.startswith("transformer.") else v for k, v in sd.items()}, path)  # fp16 like OpenAI
    ref.load_state_dict({k: v.half().float() if k.startswith("transformer.") else v for k, v in ref.state_dict().items()})
    enc = create_text_encoder("tiny_clip", weights=path)
    ids = enc.tokenize(TEXTS)
    with torch.no_grad():
        want = ref(ids)
    torch.testing.assert_close(enc.encode_text(TEXTS), want, atol=1e-5, rtol=1e-5)
    assert enc.logit_scale.item() == pytest.approx(3.0)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_openai_torchscript_archive_matches_reference(tmp_path) -> None:
    ref = RefTextCLIP().eval()
    ids = create_text_encoder("tiny_clip").tokenize(TEXTS)
    path = tmp_path / "tiny_clip_jit.pt"
    torch.jit.save(torch.jit.trace(ref, (ids,), check_trace=False), str(path))
    enc = create_text_encoder("tiny_clip", weights=path)
    with torch.no_grad():
        want = ref(ids)
    torch.testing.assert_close(enc.encode_text(TEXTS), want, atol=1e-5, rtol=1e-5)


def test_truncated_text_state_dict_gives_one_error(tmp_path) -> None:
    sd = {k: v for k, v in RefTextCLIP().state_dict().items() if "resblocks.1." not in k}
    sd["prompt_learner.ctx"] = torch.zeros(16, 64)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(AffordError) as err:
        create_text_encoder("tiny_clip", weights=tmp_path / "bad.pt")
    msg = str(err.value)
    assert "missing keys" in msg and "text_model.encoder.layers.1.self_attn.q_proj.weight" in msg
    assert "unexpected keys" in msg and "prompt_learner.ctx" in msg and "\n" not in msg


def test_encode_prompt_embeddings_equals_encode_text_and_is_causal() -> None:
    enc = create_text_encoder("tiny_clip")
    ids = enc.tokenize(TEXTS)
    emb = enc.token_embedding(ids)
    torch.testing.assert_close(enc.encode_prompt_embeddings(emb, ids), enc.encode_text(TEXTS))
    # causality: changing padding after EOT must not change the pooled feature
    noisy = emb.clone()
    noisy[:, -5:] += torch.randn_like(noisy[:, -5:])
    torch.testing.assert_close(enc.encode_prompt_embeddings(noisy, ids), enc.encode_text(TEXTS))


def test_char_level_tokenizer_layout() -> None:
    tok = ClipBPETokenizer.char_level()
    assert tok.vocab_size == 514 and (tok.sot_id, tok.eot_id) == (512, 513)
    order = list(bytes_to_unicode())
    ids = tok(["Hi X"])[0]
    assert ids[:5].tolist() == [512, order.index(ord("h")), 256 + order.index(ord("i")), 256 + order.index(ord("x")), 513]
    assert ids[5:].abs().sum() == 0
    long = tok(["word " * 100])[0]
    assert long.shape == (77,) and long[-1] == 513 and long.argmax() == 76


def test_bpe_matches_transformers_clip_tokenizer(tmp_path) -> None:
    from transformers import CLIPTokenizer

    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "t"), ("c", "u"), ("cu", "t</w>"), ("w", "i"),
              ("t", "h</w>"), ("wi", "th</w>"), ("o", "n</w>"), ("h", "o"), ("ho", "l"), ("hol", "d</w>")]
    gz = tmp_path / "bpe.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("#version: test\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    mine = ClipBPETokenizer.from_openai_gz(gz)
    hf = CLIPTokenizer(vocab=mine.encoder, merges=merges)
    for text in ["The cat sat on the mat", "an item to cut_with!", "hold  it, 42 it's"]:
        want = hf(text)["input_ids"]  # SOT ... EOT
        got = mine([text])[0]
        assert got[: len(want)].tolist() == want and got[len(want):].abs().sum() == 0
    assert mine.encode("the")[0] == mine.encoder["the</w>"]


def test_prompt_learner_shapes_gradients_and_value() -> None:
    enc = create_text_encoder("tiny_clip")
    pl = PromptLearner(enc, ["cut_with", "sit_on", "hold"], n_ctx=4)
    assert set(pl.state_dict()) == {"ctx", "token_prefix", "token_suffix"}
    assert pl.ctx.shape == (4, 64) and pl.token_prefix.shape == (3, 1, 64) and pl.token_suffix.shape == (3, 72, 64)
    assert pl.ctx.std().item() == pytest.approx(0.02, rel=0.3)
    out = pl()
    assert out.shape == (3, 64)
    out.pow(2).sum().backward()
    assert pl.ctx.grad is not None and pl.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())
    # with ctx set to the embedding of "x", the learner reproduces the plain prompt
    x_id = enc.tokenize(["x"])[0, 1]
    with torch.no_grad():
        pl.ctx.copy_(enc.token_embedding.weight[x_id].expand(4, -1))
    torch.testing.assert_close(pl(), enc.encode_text(["X X X X cut with.", "X X X X sit on.", "X X X X hold."]))


def test_plain_prompts_selectivecl_rule() -> None:
    assert plain_prompts(["hold", "cut_with", "drink_with"]) == [
        "an item to hold with", "an item to cut_with", "an item to drink_with"]
    assert plain_prompts(["cut_with"], "a person {aff} an item") == ["a person cut_with an item"]


def _no_hub(monkeypatch, tmp_path) -> None:
    """No vocabulary anywhere: no $AFFORD_CLIP_BPE, hub offline, an empty HF cache."""
    monkeypatch.delenv("AFFORD_CLIP_BPE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))


def test_real_size_towers_without_vocabulary(monkeypatch, tmp_path) -> None:
    _no_hub(monkeypatch, tmp_path)
    enc = create_text_encoder("clip_rn50", num_hidden_layers=1)
    assert (enc.width, enc.embed_dim, enc.context_length) == (512, 1024, 77)
    assert enc.model.config.num_attention_heads == 8
    with pytest.raises(AffordError, match="bpe_simple_vocab_16e6.txt.gz"):
        enc.tokenize(["hold"])
    ids = torch.zeros(1, 77, dtype=torch.long)
    ids[0, :3] = torch.tensor([49406, 320, 49407])
    assert enc.encode_prompt_embeddings(enc.token_embedding(ids), ids).shape == (1, 1024)


def test_save_pretrained_round_trip(tmp_path) -> None:
    enc = create_text_encoder("tiny_clip")
    with torch.no_grad():
        enc.logit_scale.fill_(3.25)  # learned: the round trip reset it to log(1/0.07)
    enc.save_pretrained(tmp_path / "t")
    again = create_text_encoder("tiny_clip", weights=tmp_path / "t")
    torch.testing.assert_close(again.encode_text(TEXTS), enc.encode_text(TEXTS), atol=0, rtol=0)
    assert again.logit_scale.item() == pytest.approx(3.25)


def test_a_full_clip_checkpoint_gives_its_learned_temperature(tmp_path) -> None:
    """A hub-layout CLIPModel directory (as openai/clip-vit-base-patch16) holds logit_scale at its root;
    the text tower loaded from it kept log(1/0.07) = 2.659 instead of OpenAI's ln 100 = 4.605."""
    import math

    from transformers import CLIPConfig, CLIPModel

    text = create_text_encoder("tiny_clip").model.config.to_dict()
    cfg = CLIPConfig(text_config=text, vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                         num_attention_heads=2, image_size=32, patch_size=16),
                     projection_dim=text["projection_dim"], logit_scale_init_value=math.log(100))
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    enc = create_text_encoder("tiny_clip", weights=tmp_path / "clip")
    assert enc.logit_scale.item() == pytest.approx(math.log(100), abs=1e-5)


def test_load_official_state_dict_into_existing_encoder() -> None:
    ref = RefTextCLIP().eval()
    enc = create_text_encoder("tiny_clip", trainable=True)
    enc.load_official_state_dict(dict(ref.state_dict()), "wsma_root_keys")
    assert enc.logit_scale.item() == pytest.approx(3.0) and enc.logit_scale.requires_grad
    with torch.no_grad():
        want = ref(enc.tokenize(TEXTS))
    torch.testing.assert_close(enc.encode_text(TEXTS), want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- vocabulary resolution
THE = [("t", "h"), ("th", "e</w>")]  # "the" -> one id (513); SOT 514, EOT 515


def _gz(path, merges=THE):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: test\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return path


def _weights_dir(path, merges):
    """A saved 516-id tower plus ``vocab.json`` + ``merges.txt`` of ``merges`` (as a hub download has)."""
    create_text_encoder("tiny_clip", vocab_size=516).save_pretrained(path)
    (path / "vocab.json").write_text(json.dumps(ClipBPETokenizer(merges).encoder), encoding="utf-8")
    (path / "merges.txt").write_text("#version: test\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return path


def _first_ids(enc, text="the"):
    ids = enc.tokenize([text])[0]
    return ids[: int(ids.argmax()) + 1].tolist()


CHAR_THE = [512, *ClipBPETokenizer.char_level().encode("the"), 513]


def test_weights_directory_tokenizer_is_used_without_flag_or_env(tmp_path, monkeypatch) -> None:
    _no_hub(monkeypatch, tmp_path)
    enc = create_text_encoder("clip_vitb16", weights=_weights_dir(tmp_path / "w", THE))
    assert _first_ids(enc) == [514, 513, 515]
    # without the tokenizer files a non-OpenAI-size tower has no vocabulary (and no hub fallback)
    for f in ("vocab.json", "merges.txt"):
        (tmp_path / "w" / f).unlink()
    bare = create_text_encoder("clip_vitb16", weights=tmp_path / "w")
    assert bare.tokenizer is None and bare.fallback_tokenizer is None
    with pytest.raises(AffordError, match="no CLIP BPE vocabulary"):
        bare.tokenize(["the"])


def test_env_vocabulary_beats_the_weights_directory(tmp_path, monkeypatch) -> None:
    _no_hub(monkeypatch, tmp_path)
    weights = _weights_dir(tmp_path / "w", [])  # char-level files: "the" -> 3 ids
    monkeypatch.setenv("AFFORD_CLIP_BPE", str(_gz(tmp_path / "bpe.txt.gz")))
    assert _first_ids(create_text_encoder("clip_vitb16", weights=weights)) == [514, 513, 515]
    monkeypatch.setenv("AFFORD_CLIP_BPE", str(tmp_path / "missing.txt.gz"))  # a typo is an error, not skipped
    with pytest.raises(AffordError, match=r"^\$AFFORD_CLIP_BPE: .*missing\.txt\.gz not found"):
        create_text_encoder("clip_vitb16", weights=weights)


def test_explicit_tokenizer_beats_env(tmp_path, monkeypatch) -> None:
    _no_hub(monkeypatch, tmp_path)
    weights = _weights_dir(tmp_path / "w", THE)
    monkeypatch.setenv("AFFORD_CLIP_BPE", str(_gz(tmp_path / "bpe.txt.gz")))
    chars = _weights_dir(tmp_path / "chars", [])
    # which tokenizer the tower takes (tokenising would now refuse its 514 ids against the tower's 516)
    assert create_text_encoder("clip_vitb16", weights=weights, tokenizer=chars).tokenizer.encode("the") == CHAR_THE[1:-1]
    tok = ClipBPETokenizer.char_level()
    assert create_text_encoder("clip_vitb16", weights=weights, tokenizer=tok).tokenizer is tok


def test_hub_fallback_offline_fails_lazily_in_one_line(tmp_path, monkeypatch) -> None:
    _no_hub(monkeypatch, tmp_path)
    enc = create_text_encoder("clip_rn50", num_hidden_layers=1)  # building never needs the vocabulary
    assert enc.tokenizer is None and enc.fallback_tokenizer == "openai/clip-vit-base-patch16"
    with pytest.raises(AffordError) as err:
        enc.tokenize(["hold"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("clip_rn50: no CLIP BPE vocabulary")
    for part in ("--tokenizer", "$AFFORD_CLIP_BPE", "openai/clip-vit-base-patch16", "hub lookup failed: "):
        assert part in msg


def _fake_openai_hub(monkeypatch, fail: bool = False) -> list[tuple[str, bool]]:
    """Replace ``CLIPTokenizer.from_pretrained`` by a 49,408-id stand-in (or a failure); returns its
    calls as ``(name, local_files_only)``."""
    from transformers import CLIPTokenizer

    calls: list[tuple[str, bool]] = []
    base = list(ClipBPETokenizer.char_level().encoder)[:512]
    vocab = {t: i for i, t in enumerate(base + [f"<f{i}>" for i in range(49408 - 514)]
                                        + ["<|startoftext|>", "<|endoftext|>"])}

    def from_pretrained(name, local_files_only=False, **kw):
        calls.append((name, local_files_only))
        if fail:
            raise OSError("We couldn't connect to 'https://huggingface.co'\nsecond line")
        return CLIPTokenizer(vocab=vocab, merges=[])

    monkeypatch.setattr(CLIPTokenizer, "from_pretrained", from_pretrained)
    monkeypatch.setattr("afford.backbones.clip_text.hub_unreachable", lambda: None)  # the stand-in answers
    return calls


def test_hub_fallback_is_tried_once_per_encoder(monkeypatch) -> None:
    monkeypatch.delenv("AFFORD_CLIP_BPE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls = _fake_openai_hub(monkeypatch, fail=True)
    enc = create_text_encoder("clip_rn50", num_hidden_layers=1)
    assert calls == []
    for _ in range(2):
        with pytest.raises(AffordError, match=r"hub lookup failed: We couldn't connect to 'https://huggingface.co'$"):
            enc.tokenize(["hold"])
    name = "openai/clip-vit-base-patch16"
    assert calls == [(name, True), (name, False)]  # the cache, then the hub; once
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = _fake_openai_hub(monkeypatch, fail=True)
    with pytest.raises(AffordError, match="hub lookup failed"):
        create_text_encoder("clip_rn50", num_hidden_layers=1).tokenize(["hold"])
    assert calls == [(name, True)]  # offline: the cache only
    calls = _fake_openai_hub(monkeypatch)
    enc = create_text_encoder("clip_rn50", num_hidden_layers=1)
    assert _first_ids(enc, "hi X") == [49406, 71, 328, 343, 49407]
    assert _first_ids(enc, "hi") == [49406, 71, 328, 49407]
    assert calls == [(name, True)]
    assert create_text_encoder("tiny_clip").fallback_tokenizer is None  # 514 ids: no OpenAI vocabulary


def test_wsma_tokenises_its_prompts_on_demand_only(monkeypatch) -> None:
    from afford.methods.wsma import WSMA, WSMAConfig
    from afford.methods.wsma_official import _finish

    monkeypatch.delenv("AFFORD_CLIP_BPE", raising=False)
    calls = _fake_openai_hub(monkeypatch, fail=True)
    cfg = WSMAConfig(backbone="tiny_vit", text_encoder="clip_rn50", attnpool_heads=8, n_ctx=2, grid=4,
                     nmf_dim=16, nmf_rank=4)
    m = WSMA(cfg, ("hold", "cut_with"))
    assert m._ids_pending and calls == []  # construction stays offline
    with pytest.raises(AffordError) as err:
        _finish(m, {}, "rn50.pth")
    msg = str(err.value)
    assert msg.startswith("rn50.pth: cannot tokenise the WSMA prompts: clip_rn50: no CLIP BPE vocabulary") and "\n" not in msg
    assert all(p in msg for p in ("--tokenizer", "$AFFORD_CLIP_BPE", "openai/clip-vit-base-patch16"))
    with pytest.raises(AffordError, match=r"--tokenizer.*\$AFFORD_CLIP_BPE.*openai/clip-vit-base-patch16"):
        m.text_features()

    calls = _fake_openai_hub(monkeypatch)
    m = WSMA(cfg, ("hold", "cut_with"))
    ctx, rng = m.prompt_learner.ctx.detach().clone(), torch.get_rng_state()
    converted: dict[str, torch.Tensor] = {}
    _finish(m, converted, "rn50.pth")
    assert calls == [("openai/clip-vit-base-patch16", True)] and not m._ids_pending
    want = m.text_encoder.tokenize(["X X hold.", "X X cut with."])
    assert torch.equal(converted["prompt_ids"], want) and torch.equal(m.prompt_ids, want)
    assert torch.equal(m.prompt_learner.tokenized_prompts, want)
    emb = m.text_encoder.token_embedding.weight.detach()
    torch.testing.assert_close(m.prompt_learner.token_suffix, emb[want[:, 3:]])
    torch.testing.assert_close(m.prompt_learner.token_prefix, emb[want[:, :1]])
    assert torch.equal(m.prompt_learner.ctx, ctx) and torch.equal(torch.get_rng_state(), rng)
    assert m.text_features().shape == (2, 1024)


def test_text_is_cleaned_as_openais_tokenizer_cleans_it(tmp_path) -> None:
    """ftfy always runs (it was optional and absent here): a curly apostrophe and a decomposed é give
    the ids of their plain forms, as with OpenAI's tokenizer."""
    from afford.backbones.tokenizer import clean_text

    assert clean_text("A person\u2019s  CAFE\u0301") == "a person's café"


def test_the_other_tokenizer_rules(tmp_path, monkeypatch) -> None:
    """resolve_tokenizer's remaining rules: a tiny tower keeps its char-level vocabulary whatever
    $AFFORD_CLIP_BPE says (no real vocabulary fits 514 ids); OpenAI's bpe_simple_vocab_16e6.txt.gz next to a
    weights file is that file's vocabulary; ids beyond the tower's vocabulary are refused, not embedded."""

    from afford.backbones.clip_text import BPE_FILENAME, resolve_tokenizer

    _no_hub(monkeypatch, tmp_path)
    monkeypatch.setenv("AFFORD_CLIP_BPE", str(_gz(tmp_path / "env.txt.gz")))
    assert _first_ids(create_text_encoder("tiny_clip")) == CHAR_THE
    monkeypatch.delenv("AFFORD_CLIP_BPE")
    (tmp_path / "w").mkdir()
    gz = _gz(tmp_path / "w" / BPE_FILENAME)
    weights = tmp_path / "w" / "ViT-B-16.pt"
    weights.write_bytes(b"")
    found = resolve_tokenizer("clip_vitb16", None, "file", str(weights))
    want = ClipBPETokenizer.from_openai_gz(gz)
    assert found is not None and torch.equal(found(["the cat"]), want(["the cat"]))
    assert resolve_tokenizer("clip_vitb16", None, "file", str(tmp_path / "elsewhere.pt")) is None
    enc = create_text_encoder("tiny_clip", tokenizer=lambda texts, context_length: torch.full((1, 77), 600))
    with pytest.raises(AffordError, match="tokenizer produced id 600 >= vocab size 514"):
        enc.tokenize(["the"])
