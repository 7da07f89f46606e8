"""CLIP text tower on ``transformers.CLIPTextModelWithProjection``.

WSMA (CoOp prompts through the RN50 text tower, fine-tuned) and SelectiveCL (fixed prompts
through the ViT-B/16 tower, frozen) both need the tower at the *embedding* level:
``encode_prompt_embeddings`` takes already-embedded prompts so learnable context vectors can be
spliced in. The forward is the OpenAI one (wsma.md §4 step 3): add positional embeddings, run
the pre-LN blocks with a causal mask, ``ln_final``, take the row at the EOT position (the
largest id), project.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from afford.backbones.tokenizer import ClipBPETokenizer, HFTokenizerAdapter
from afford.errors import AffordError, first_line
from afford.hub import hub_unreachable, offline

log = logging.getLogger(__name__)
Tokenizer = Callable[..., Tensor]
#: Environment variable naming a ``bpe_simple_vocab_16e6.txt.gz``, directory or hub name (beats
#: the model's own tokenizer files, loses to an explicit ``tokenizer``).
BPE_ENV = "AFFORD_CLIP_BPE"
BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
#: Last resort, fetched lazily: every OpenAI CLIP model (RN50 included) shares this vocabulary.
FALLBACK_TOKENIZER = "openai/clip-vit-base-patch16"
OPENAI_VOCAB_SIZE = 49408
#: A byte-level BPE has at least the 2 x 256 byte symbols + SOT + EOT.
_MIN_BPE_IDS = 514


class CLIPTextEncoder(nn.Module):
    """CLIP text tower with tokenisation and embedding-level access.

    Frozen unless ``trainable`` (parameters do not require grad and the module stays in eval
    mode), but ``encode_prompt_embeddings`` never runs under ``no_grad``: a frozen tower must
    still back-propagate to CoOp context vectors.

    Attributes:
        logit_scale: CLIP's learned temperature (log scale), read from OpenAI files, a full CLIP
            checkpoint (hub name or directory) or a directory this class saved, when present (WSMA's
            ``L_clip`` uses it); initialised to ``log(1/0.07)`` otherwise.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer | None,
        name: str,
        trainable: bool = False,
        logit_scale: Tensor | None = None,
        fallback_tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.tokenizer = tokenizer
        #: Hub tokenizer tried once, on the first ``tokenize`` without ``tokenizer``: lazily, so
        #: building a model or loading a saved run never touches the network.
        self.fallback_tokenizer = fallback_tokenizer
        self._fallback_error: str | None = None
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
        """Write the transformers model and the learned temperature (its config's ``afford_logit_scale``:
        the text model has no slot for it); reload with ``create_text_encoder(name, weights=path)``."""
        self.model.config.afford_logit_scale = float(self.logit_scale.detach())
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
    def require_tokenizer(self) -> Tokenizer:
        """The tokenizer, else the hub ``fallback_tokenizer`` (tried once; success or failure is kept).

        Raises one AffordError naming the three ways to provide a vocabulary.
        """
        if self.tokenizer is not None:
            return self.tokenizer
        if self.fallback_tokenizer is not None and self._fallback_error is None:
            try:
                self.tokenizer = _hub_tokenizer(self.fallback_tokenizer, self.context_length,
                                                vocab=int(self.model.config.vocab_size))
                return self.tokenizer
            except AffordError as exc:
                self._fallback_error = str(exc)
        raise AffordError(missing_vocabulary(self.name, self._fallback_error))

    def tokenize(self, texts: str | Sequence[str]) -> Tensor:
        """Texts -> ``(N, context_length)`` ids: SOT, tokens, EOT, zero padding."""
        tokenizer = self.require_tokenizer()
        vocab = int(self.model.config.vocab_size)
        n = getattr(tokenizer, "vocab_size", None)
        if isinstance(n, int) and n != vocab:  # another or a truncated vocabulary: other ids, other prompts
            raise AffordError(f"{self.name}: the tokenizer's vocabulary has {n} ids, the text tower's {vocab}: not "
                              "this CLIP's vocabulary (a truncated or other bpe file?)")
        ids = tokenizer(texts, context_length=self.context_length)
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


def missing_vocabulary(name: str, hub_error: str | None = None) -> str:
    """The one-line 'no vocabulary' message, naming every way to provide one."""
    msg = (f"{name}: no CLIP BPE vocabulary: pass --tokenizer (model.tokenizer) {BPE_FILENAME}|DIR|HUB_NAME, "
           f"or set ${BPE_ENV}, or load CLIP weights from a hub name or a directory that holds its tokenizer "
           f"files (e.g. {FALLBACK_TOKENIZER})")
    return msg if hub_error is None else f"{msg}; hub lookup failed: {hub_error}"


def hub_fallback(vocab_size: int) -> str | None:
    """The lazy hub tokenizer for a tower of ``vocab_size`` ids: only OpenAI's vocabulary has one."""
    return FALLBACK_TOKENIZER if vocab_size == OPENAI_VOCAB_SIZE else None


def resolve_tokenizer(
    name: str,
    tokenizer: str | os.PathLike[str] | Tokenizer | None,
    weights_kind: str,
    weights_where: str,
    context_length: int = 77,
) -> Tokenizer | None:
    """Pick the tokenizer for a text encoder without guessing from the network.

    Order: an explicit ``tokenizer`` (callable, ``.gz`` file, directory, hub name); ``tiny_*``
    -> the merge-free char-level vocabulary (no real vocabulary fits its 514 ids, so
    ``$AFFORD_CLIP_BPE`` is ignored there); ``$AFFORD_CLIP_BPE`` (same forms); the model's own
    files: a weights directory holding ``vocab.json`` + ``merges.txt``, a hub name (transformers
    ``CLIPTokenizer``), ``bpe_simple_vocab_16e6.txt.gz`` next to a weights file. Otherwise None:
    :meth:`CLIPTextEncoder.require_tokenizer` then tries the hub fallback when text is tokenised.
    """
    if callable(tokenizer):
        return tokenizer
    if tokenizer is not None:
        return _load_tokenizer(str(tokenizer), context_length)
    if name.startswith("tiny"):
        return ClipBPETokenizer.char_level(context_length)
    env = os.environ.get(BPE_ENV, "").strip()
    if env:
        return _load_tokenizer(env, context_length, what=f"${BPE_ENV}")
    if weights_kind == "dir" and _has_vocab_merges(Path(weights_where)):
        return ClipBPETokenizer.from_vocab_merges(weights_where, context_length)
    if weights_kind == "hub":
        return _load_tokenizer(weights_where, context_length)
    if weights_kind == "file" and (Path(weights_where).parent / BPE_FILENAME).is_file():
        return ClipBPETokenizer.from_openai_gz(Path(weights_where).parent / BPE_FILENAME, context_length)
    return None


def _has_vocab_merges(d: Path) -> bool:
    return (d / "vocab.json").is_file() and (d / "merges.txt").is_file()


def _load_tokenizer(spec: str, context_length: int, what: str = "tokenizer") -> Tokenizer:
    p = Path(spec).expanduser()
    if p.is_file():
        return ClipBPETokenizer.from_openai_gz(p, context_length)
    if p.is_dir():
        if not _has_vocab_merges(p):
            raise AffordError(f"{what}: {p} has no vocabulary files (vocab.json + merges.txt)")
        return ClipBPETokenizer.from_vocab_merges(p, context_length)
    if spec.startswith(("/", ".", "~")) or spec.endswith((".gz", ".txt", ".json")) or spec.count("/") > 1:
        raise AffordError(f"{what}: {spec} not found (expected a {BPE_FILENAME} file, a directory with "
                          "vocab.json + merges.txt, or a hub name)")
    try:
        return _hub_tokenizer(spec, context_length)
    except AffordError as exc:
        raise AffordError(f"{what}: could not load {spec!r}: {exc}") from None


def _hub_tokenizer(spec: str, context_length: int, vocab: int | None = None) -> Tokenizer:
    """transformers ``CLIPTokenizer``, from the HF cache first, then the hub unless offline.

    The cache goes first, and the hub is only asked once a quick connection to it succeeds,
    because without a network huggingface_hub retries every file for minutes before failing.
    Failures -> one-line AffordError.
    """
    from transformers import CLIPTokenizer

    error = ""
    # HF_HUB_OFFLINE is read when huggingface_hub is imported; honour a later setting too.
    for local in (True,) if offline() else (True, False):
        if not local:
            if (unreachable := hub_unreachable()) is not None:
                error = f"{spec!r} is not in the Hugging Face cache and {unreachable}"
                break
            log.warning("fetching the CLIP tokenizer %s from the Hugging Face hub (pass --tokenizer or set $%s "
                        "to skip)", spec, BPE_ENV)
        try:
            tok = CLIPTokenizer.from_pretrained(spec, local_files_only=local)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # not MemoryError or bugs
            error = first_line(exc)
            continue
        n = len(tok)
        if n >= _MIN_BPE_IDS and (vocab is None or n == vocab):
            return HFTokenizerAdapter(tok, context_length)
        # transformers builds an empty tokenizer instead of failing when it finds no file
        error = (f"no tokenizer files for {spec!r} in the cache or on the hub (got a {n}-id vocabulary"
                 + ("" if vocab is None else f", expected {vocab}") + ")")
    raise AffordError(error)


