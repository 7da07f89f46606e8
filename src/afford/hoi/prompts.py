"""THID-style learnable HOI prompts ``[SOS] PREFIX verb CONJUN object [EOT]`` (hoi.md §4).

CLIP4HOI's classifier (§2, unverified) embeds every HOI class, seen or unseen, through the
CLIP text tower; the verifiable form is THID's prompt learner: ``n_prefix`` learned vectors
shared by all classes, the verb's word embeddings, ``n_conjun`` shared learned vectors, the
object's word embeddings, then EOT. Unlike WSMA's CoOp learner
(:class:`afford.modules.prompts.PromptLearner`) the learned vectors sit at class-dependent
positions, so they are spliced into ``token_embedding(token_ids)`` by an index map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from afford.backbones.clip_text import CLIPTextEncoder
from afford.errors import AffordError

#: A one-token word whose id marks learned positions in ``token_ids`` (CoOp's "X"); any id
#: below EOT works, since ids only locate the EOT row (argmax).
PLACEHOLDER = "X"


def _name(s: str) -> str:
    """HICO-DET names use underscores: ``no_interaction`` -> "no interaction" (as WSMA does)."""
    return s.replace("_", " ")


def _word_ids(ids: Tensor) -> list[int]:
    """One tokenised text ``(L,)`` -> its ids between SOT and EOT (EOT = the largest id)."""
    return ids[1 : int(ids.argmax())].tolist()


class HOIPromptLearner(nn.Module):
    """One learned prompt, hence one text feature, per (verb, object) HOI class.

    Args:
        text_encoder: CLIP text tower (frozen or not; gradients reach the prompts either way).
            Held but not registered, like WSMA's learner, so the owner saves the tower once.
        verbs, objects: names in label order (underscores become spaces).
        hoi_pairs: ``(verb_idx, obj_idx)`` per HOI class, in class order.
        n_prefix, n_conjun: learned vectors before the verb / between verb and object
            (THID: 8 and 2, §4).
        init_std: std of their normal initialisation (THID: 0.01).

    ``token_ids`` ``(C, L)`` holds SOT, the placeholder id at learned positions, the name ids,
    EOT (the largest id, found by the tower's argmax pooling) and 0 padding. Padding rows are
    ``token_embedding(0)`` as in plain CLIP; the causal mask keeps them from the EOT feature.
    """

    def __init__(self, text_encoder: CLIPTextEncoder, verbs: Sequence[str], objects: Sequence[str],
                 hoi_pairs: Sequence[tuple[int, int]], n_prefix: int = 8, n_conjun: int = 2,
                 init_std: float = 0.01) -> None:
        super().__init__()
        if not hoi_pairs:
            raise AffordError("hoi_pairs: at least one (verb, object) class is needed")
        if n_prefix < 0 or n_conjun < 0:
            raise AffordError(f"n_prefix/n_conjun: must be >= 0, got {n_prefix}/{n_conjun}")
        object.__setattr__(self, "text_encoder", text_encoder)
        self.n_prefix, self.n_conjun = n_prefix, n_conjun
        self.verbs, self.objects = [_name(v) for v in verbs], [_name(o) for o in objects]
        self.hoi_pairs = [(int(v), int(o)) for v, o in hoi_pairs]
        for v, o in self.hoi_pairs:
            if not (0 <= v < len(verbs) and 0 <= o < len(objects)):
                raise AffordError(f"hoi_pairs: ({v}, {o}) out of range for {len(verbs)} verbs, {len(objects)} objects")
        width = text_encoder.width
        self.prefix = nn.Parameter(torch.empty(n_prefix, width).normal_(std=init_std))
        self.conjun = nn.Parameter(torch.empty(n_conjun, width).normal_(std=init_std))
        # Persistent, so a saved run predicts without the vocabulary (as SelectiveCL's prompt ids).
        shape = (len(self.hoi_pairs), text_encoder.context_length)
        self.register_buffer("token_ids", torch.zeros(shape, dtype=torch.long))
        self.register_buffer("learned_index", torch.full(shape, -1, dtype=torch.long))
        self.register_buffer("bounds", torch.zeros(shape[0], 3, dtype=torch.long))  # CONJUN start, object start, EOT
        self._pending = True
        if text_encoder.tokenizer is not None:
            self.tokenize()
        self.register_load_state_dict_post_hook(self._loaded)

    @staticmethod
    def _loaded(module: nn.Module, incompatible: object) -> None:
        missing = getattr(incompatible, "missing_keys", [])
        if not any(k.endswith(("token_ids", "learned_index", "bounds")) for k in missing):
            module._pending = False  # type: ignore[assignment]

    def tokenize(self) -> None:
        """Fill ``token_ids``/``learned_index`` with the text tower's vocabulary (hub fallback if needed)."""
        te = self.text_encoder
        special = te.tokenize(["", PLACEHOLDER])
        sot, eot = int(special[0, 0]), int(special[0, 1])
        placeholder = _word_ids(special[1])
        if len(placeholder) != 1:
            raise AffordError(f"tokenizer: {PLACEHOLDER!r} is not one token ({placeholder})")
        verb_ids = [_word_ids(r) for r in te.tokenize(self.verbs)]
        obj_ids = [_word_ids(r) for r in te.tokenize(self.objects)]
        ids = torch.zeros_like(self.token_ids, device="cpu")
        bounds = torch.zeros_like(self.bounds, device="cpu")
        learned = torch.full_like(ids, -1)  # index into cat([prefix, conjun]) at learned positions
        n_prefix, n_conjun, length = self.n_prefix, self.n_conjun, ids.shape[1]
        for c, (v, o) in enumerate(self.hoi_pairs):
            v0 = 1 + n_prefix
            c0 = v0 + len(verb_ids[v])
            o0 = c0 + n_conjun
            e = o0 + len(obj_ids[o])
            if e >= length:
                raise AffordError(f"hoi class {c} ({self.verbs[v]} {self.objects[o]}): prompt of {e + 1} tokens "
                                  f"exceeds the context length {length}")
            ids[c, 0], ids[c, e] = sot, eot
            ids[c, 1:v0] = placeholder[0]
            ids[c, v0:c0] = torch.tensor(verb_ids[v], dtype=torch.long)
            ids[c, c0:o0] = placeholder[0]
            ids[c, o0:e] = torch.tensor(obj_ids[o], dtype=torch.long)
            learned[c, 1:v0] = torch.arange(n_prefix)
            learned[c, c0:o0] = n_prefix + torch.arange(n_conjun)
            bounds[c] = torch.tensor([c0, o0, e])
        if bool((ids.argmax(dim=-1) != (ids == eot).long().argmax(dim=-1)).any()):
            raise AffordError(f"tokenizer: EOT id {eot} is not the largest id of every prompt")
        self.token_ids.copy_(ids)
        self.learned_index.copy_(learned)
        self.bounds.copy_(bounds)
        self._pending = False

    def _ensure_ids(self) -> None:
        if self._pending:  # a fresh model without a vocabulary at hand: the lazy hub fallback
            self.tokenize()

    def positions(self, c: int) -> dict[str, slice | int]:
        """Where class ``c``'s parts lie: ``prefix``/``verb``/``conjun``/``object`` slices, ``eot`` index.

        Read back from the stored ids, so a loaded run answers without its vocabulary.
        """
        if not 0 <= c < len(self.hoi_pairs):
            raise AffordError(f"class index {c} out of range [0, {len(self.hoi_pairs)})")
        self._ensure_ids()
        c0, o0, eot = (int(x) for x in self.bounds[c])
        return dict(prefix=slice(1, 1 + self.n_prefix), verb=slice(1 + self.n_prefix, c0), conjun=slice(c0, o0),
                    object=slice(o0, eot), eot=eot)

    def prompt_embeddings(self) -> Tensor:
        """``(C, L, W)``: word embeddings of ``token_ids`` with the learned vectors spliced in."""
        self._ensure_ids()
        emb = self.text_encoder.token_embedding
        base = emb(self.token_ids.to(emb.weight.device))
        learned = torch.cat([self.prefix, self.conjun]).to(base.dtype)
        if learned.shape[0] == 0:
            return base
        index = self.learned_index.to(base.device)
        mask = (index >= 0)[..., None]
        # A one-hot matmul, not ``learned[index]``: the gather's backward accumulates the shared
        # vectors' gradients with index_put, whose order (hence rounding) varies with CPU threads.
        onehot = torch.nn.functional.one_hot(index.clamp(min=0), learned.shape[0]).to(base.dtype)
        return torch.where(mask, onehot @ learned, base)

    def forward(self) -> Tensor:
        """``(C, E)`` text features, one per HOI class (not L2-normalised)."""
        emb = self.prompt_embeddings()
        # Causal attention: nothing after a prompt's EOT reaches its feature, so the tower runs only
        # up to the longest prompt (~20 of 77 tokens for HICO-DET: the cost of a step's 600 prompts).
        n = int(self.bounds[:, 2].max()) + 1
        return self.text_encoder.encode_prompt_embeddings(emb[:, :n], self.token_ids[:, :n].to(emb.device))
