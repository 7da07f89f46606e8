"""CLIP tokenisation that works offline.

CLIP's byte-level BPE (the OpenAI ``bpe_simple_vocab_16e6.txt.gz``, 49,408 ids) is implemented
here directly so the WSMA/SelectiveCL prompts tokenise exactly as in the reference code without
a hub download. The vocabulary is, in order: the 256 byte symbols, the same 256 with the
end-of-word marker ``</w>``, one entry per merge, then ``<|startoftext|>`` and
``<|endoftext|>``. Sequences are ``[SOT] tokens [EOT]`` zero-padded to the context length, so
the EOT id is the largest id of each row (CLIP pools there).

For tiny test models :meth:`ClipBPETokenizer.char_level` is the same scheme with **no merges**:
514 ids — 0..255 the bytes (in CLIP's byte-symbol order) inside a word, 256..511 the same
bytes at a word end, 512 = SOT, 513 = EOT. Every word therefore maps to one id per byte and a
one-letter word such as CoOp's placeholder ``X`` is exactly one token, as with the real BPE.
"""

from __future__ import annotations

import gzip
import html
import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import regex
import torch

from afford.errors import AffordError

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
#: Number of merges the OpenAI file contributes (49152 - 256 - 2 lines after its header).
OPENAI_NUM_MERGES = 49152 - 256 - 2
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map each byte to a printable unicode symbol (GPT-2/CLIP byte-level BPE alphabet).

    Printable Latin-1 bytes map to themselves; the others are shifted past 255 so no symbol is
    whitespace or a control character. The dict order fixes the first 256 vocabulary ids.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    order, symbols = list(keep), list(keep)
    for b in range(256):
        if b not in keep:
            order.append(b)
            symbols.append(256 + len(order) - len(keep) - 1)
    return {b: chr(c) for b, c in zip(order, symbols, strict=True)}


def clean_text(text: str) -> str:
    """CLIP's normalisation, as OpenAI's tokenizer: ftfy (curly quotes, NFC: "person’s" and "person's"
    give the same ids), HTML unescape, collapse whitespace, lower case."""
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class ClipBPETokenizer:
    """Callable ``tokenizer(list[str]) -> (N, context_length) LongTensor`` (CLIP byte-level BPE).

    Text longer than the context is truncated and the last position set to EOT (open_clip's
    behaviour) so pooling at the largest id still finds an end token.
    """

    def __init__(
        self,
        merges: Sequence[tuple[str, str]],
        vocab: dict[str, int] | None = None,
        context_length: int = 77,
    ) -> None:
        self.byte_encoder = bytes_to_unicode()
        if vocab is None:
            base = list(self.byte_encoder.values())
            tokens = base + [s + "</w>" for s in base] + ["".join(m) for m in merges] + [SOT, EOT]
            vocab = {t: i for i, t in enumerate(tokens)}
        self.encoder = vocab
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.context_length = context_length
        self.sot_id = vocab[SOT]
        self.eot_id = vocab[EOT]
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    # -------------------------------------------------------------- constructors
    @classmethod
    def char_level(cls, context_length: int = 77) -> ClipBPETokenizer:
        """The 514-id merge-free vocabulary used by the tiny test models."""
        return cls([], context_length=context_length)

    @classmethod
    def from_openai_gz(cls, path: str | os.PathLike[str], context_length: int = 77) -> ClipBPETokenizer:
        """Read OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (header line, then one merge per line)."""
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:  # gzip.BadGzipFile is an OSError
            raise AffordError(f"{path}: not a gzipped CLIP BPE vocabulary ({type(e).__name__}: {e})") from None
        return cls(_merges(lines[1 : OPENAI_NUM_MERGES + 1], path), context_length=context_length)

    @classmethod
    def from_vocab_merges(cls, directory: str | os.PathLike[str], context_length: int = 77) -> ClipBPETokenizer:
        """Read a transformers-style ``vocab.json`` + ``merges.txt`` directory."""
        d = Path(directory)
        try:
            vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
            lines = (d / "merges.txt").read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AffordError(f"{d}: unreadable tokenizer files vocab.json / merges.txt ({type(e).__name__}: {e})") from None
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise AffordError(f"{d / 'vocab.json'}: expected a JSON object mapping tokens to integer ids")
        lines = [line for line in lines if not line.startswith("#version")]
        return cls(_merges(lines, d / "merges.txt"), vocab=vocab, context_length=context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    # -------------------------------------------------------------- encoding
    def bpe(self, token: str) -> list[str]:
        """Greedy lowest-rank pair merging of one pre-token (already byte-mapped)."""
        if token in self._cache:
            return self._cache[token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without SOT/EOT."""
        ids: list[int] = []
        for piece in _PATTERN.findall(clean_text(text)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        n = context_length or self.context_length
        return _zero_padded([[self.sot_id, *self.encode(t)][: n - 1] + [self.eot_id] for t in texts], n)


class HFTokenizerAdapter:
    """Wrap a transformers CLIP tokenizer (hub name/directory) to the OpenAI id layout.

    transformers pads with EOT by default; we pad with 0 as OpenAI does, so both sources give
    identical id tensors for the same vocabulary.
    """

    def __init__(self, tokenizer, context_length: int = 77) -> None:  # noqa: ANN001 - any HF tokenizer
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.eot_id = int(tokenizer.eos_token_id)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        n = context_length or self.context_length
        rows = [list(self.tokenizer(clean_text(t), add_special_tokens=True)["input_ids"]) for t in texts]
        return _zero_padded([ids if len(ids) <= n else ids[: n - 1] + [self.eot_id] for ids in rows], n)


def _zero_padded(rows: list[list[int]], n: int) -> torch.Tensor:
    """Token id rows (each at most ``n`` long) -> ``(len(rows), n)`` int64, padded with 0 as OpenAI does."""
    out = torch.zeros(len(rows), n, dtype=torch.long)
    for i, ids in enumerate(rows):
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def _merges(lines: list[str], source: object) -> list[tuple[str, str]]:
    """Merge rules, one ``a b`` pair per non-empty line; a malformed line is an error naming the file."""
    out = []
    for i, line in enumerate(lines):
        if line.strip():
            pair = line.split()
            if len(pair) != 2:
                raise AffordError(f"{source}: merge rule {i + 1} is {line[:60]!r}; expected two symbols (not a CLIP "
                                  "BPE vocabulary?)")
            out.append((pair[0], pair[1]))
    return out
