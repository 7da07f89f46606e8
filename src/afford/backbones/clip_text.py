"""CLIP text tower on ``transformers.CLIPTextModelWithProjection``.

WSMA (CoOp prompts through the RN50 text tower, fine-tuned) and SelectiveCL (fixed prompts
through the ViT-B/16 tower, frozen) both need the tower at the *embedding* level:
``encode_prompt_embeddings`` takes already-embedded prompts so learnable context vectors can be
spliced in. The forward is the OpenAI one (wsma.md §4 step 3): add positional embeddings, run
the pre-LN blocks with a causal mask, ``ln_final``, take the row at the EOT position (the
largest id), project.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from afford.backbones.tokenizer import ClipBPETokenizer, HFTokenizerAdapter
from afford.errors import AffordError, first_line

Tokenizer = Callable[..., Tensor]
#: Environment variable naming a ``bpe_simple_vocab_16e6.txt.gz`` (used when nothing else is given).
BPE_ENV = "AFFORD_CLIP_BPE"
BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"


class CLIPTextEncoder(nn.Module):
    """CLIP text tower with tokenisation and embedding-level access.

    Frozen unless ``trainable`` (parameters do not require grad and the module stays in eval
    mode), but ``encode_prompt_embeddings`` never runs under ``no_grad``: a frozen tower must
    still back-propagate to CoOp context vectors.

    Attributes:
        logit_scale: CLIP's learned temperature (log scale), read from OpenAI files when present
            (WSMA's ``L_clip`` uses it); initialised to ``log(1/0.07)`` otherwise.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer | None,
        name: str,
        trainable: bool = False,
        logit_scale: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.tokenizer = tokenizer
        self.trainable = trainable
        init = torch.tensor(math.log(1 / 0.07)) if logit_scale is None else logit_scale.detach().float().reshape(())
        self.logit_scale = nn.Parameter(init.clone())
        self.requires_grad_(trainable)
        self.train(trainable)

    def train(self, mode: bool = True) -> CLIPTextEncoder:
        """Frozen towers stay in eval mode whatever the parent asks."""
        return super().train(mode and self.trainable)

    # ------------------------------------------------------------------ attributes
    @property
    def width(self) -> int:
        """Token embedding width W (512 for the OpenAI towers)."""
        return int(self.model.config.hidden_size)

    @property
    def embed_dim(self) -> int:
        """Output (joint space) width E."""
        return int(self.model.config.projection_dim)

    @property
    def context_length(self) -> int:
        return int(self.model.config.max_position_embeddings)

    @property
    def token_embedding(self) -> nn.Embedding:
        """The ``(vocab, W)`` id embedding, e.g. for building CoOp prefix/suffix buffers."""
        return self.model.text_model.embeddings.token_embedding

    def save_pretrained(self, path: str | Path) -> None:
        """Write the transformers model; reload with ``create_text_encoder(name, weights=path)``."""
        self.model.save_pretrained(str(path))

    def load_official_state_dict(self, sd: dict[str, Tensor], source: str) -> None:
        """Strictly load OpenAI-named (e.g. WSMA's root text keys) or transformers-named weights.

        ``logit_scale`` is taken when present. Raises one AffordError listing every mismatch.
        """
        from afford.backbones.convert import is_openai_clip, load_strict, openai_text_to_hf

        scale = None
        if is_openai_clip(sd):
            sd, scale = openai_text_to_hf(sd)
        load_strict(self.model, sd, source)
        if scale is not None:
            with torch.no_grad():
                self.logit_scale.copy_(scale.reshape(()))

    # ------------------------------------------------------------------ encoding
    def tokenize(self, texts: str | Sequence[str]) -> Tensor:
        """Texts -> ``(N, context_length)`` ids: SOT, tokens, EOT, zero padding."""
        if self.tokenizer is None:
            raise AffordError(
                f"{self.name}: no CLIP BPE vocabulary; pass tokenizer='.../{BPE_FILENAME}' (or a directory with "
                f"vocab.json + merges.txt), or set ${BPE_ENV}"
            )
        ids = self.tokenizer(texts, context_length=self.context_length)
        vocab = int(self.model.config.vocab_size)
        if int(ids.max()) >= vocab:
            raise AffordError(f"{self.name}: tokenizer produced id {int(ids.max())} >= vocab size {vocab}")
        return ids

    def encode_text(self, texts: str | Sequence[str]) -> Tensor:
        """Texts -> ``(N, E)`` projected EOT features (not L2-normalised)."""
        ids = self.tokenize(texts).to(self.token_embedding.weight.device)
        ctx = torch.enable_grad() if self.trainable else torch.no_grad()
        with ctx:
            return self.encode_prompt_embeddings(self.token_embedding(ids), ids)

    def encode_prompt_embeddings(self, embeds: Tensor, token_ids: Tensor) -> Tensor:
        """``(N, L, W)`` prompt embeddings + ``(N, L)`` ids -> ``(N, E)`` text features.

        ``token_ids`` only locate the EOT row (argmax id), as in OpenAI CLIP; the embeddings are
        used as given, so learned context vectors may replace any positions.
        """
        tm = self.model.text_model
        n, length, _ = embeds.shape
        x = embeds + tm.embeddings.position_embedding.weight[:length].to(embeds.dtype)
        mask = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu(1)[None, None]
        for layer in tm.encoder.layers:
            x = layer(x, mask)
        x = tm.final_layer_norm(x)
        eot = token_ids.to(x.device).argmax(dim=-1)
        return self.model.text_projection(x[torch.arange(n, device=x.device), eot])


def resolve_tokenizer(
    name: str,
    tokenizer: str | os.PathLike[str] | Tokenizer | None,
    weights_kind: str,
    weights_where: str,
    context_length: int = 77,
) -> Tokenizer | None:
    """Pick the tokenizer for a text encoder, offline whenever possible.

    Order: an explicit ``tokenizer`` (callable, ``.gz`` file, directory, hub name); ``tiny_clip``
    -> the merge-free char-level vocabulary; a weights directory holding ``vocab.json`` +
    ``merges.txt``; a hub name (transformers ``CLIPTokenizer``); ``bpe_simple_vocab_16e6.txt.gz``
    next to a weights file or named by ``$AFFORD_CLIP_BPE``. Otherwise None, and
    :meth:`CLIPTextEncoder.tokenize` explains what to provide.
    """
    if callable(tokenizer):
        return tokenizer
    if tokenizer is not None:
        return _load_tokenizer(str(tokenizer), context_length)
    if name.startswith("tiny"):
        return ClipBPETokenizer.char_level(context_length)
    if weights_kind == "dir" and (Path(weights_where) / "merges.txt").is_file():
        return ClipBPETokenizer.from_vocab_merges(weights_where, context_length)
    if weights_kind == "hub":
        return _load_tokenizer(weights_where, context_length)
    candidates = [os.environ.get(BPE_ENV, "")]
    if weights_kind == "file":
        candidates.append(str(Path(weights_where).parent / BPE_FILENAME))
    for c in candidates:
        if c and Path(c).is_file():
            return ClipBPETokenizer.from_openai_gz(c, context_length)
    return None


def _load_tokenizer(spec: str, context_length: int) -> Tokenizer:
    p = Path(spec).expanduser()
    if p.is_file():
        return ClipBPETokenizer.from_openai_gz(p, context_length)
    if p.is_dir():
        if not ((p / "vocab.json").is_file() and (p / "merges.txt").is_file()):
            raise AffordError(f"tokenizer: {p} has no vocab.json + merges.txt")
        return ClipBPETokenizer.from_vocab_merges(p, context_length)
    try:
        from transformers import CLIPTokenizer

        return HFTokenizerAdapter(CLIPTokenizer.from_pretrained(spec), context_length)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # not MemoryError or bugs
        msg = first_line(exc)
        raise AffordError(f"tokenizer: could not load {spec!r}: {msg}") from None
