"""Text prompts: CoOp learnable context (WSMA) and plain templates (SelectiveCL).

CoOp (Zhou et al., IJCV 2022) replaces the words of a hand-written prompt by ``n_ctx`` learned
vectors shared across classes. WSMA uses 16 vectors, initialised N(0, 0.02^2), with the class
name at the end (methods.md §2.1): the prompt is tokenised as ``"X X ... X <name>."`` and the
embeddings of the X placeholders are swapped for the learned context.

Trainable prompt modules live here, above the frozen text towers of ``afford.backbones``, so
SelectiveCL's and CLIP4HOI's prompt learners join them without touching the bottom layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from afford.backbones.clip_text import CLIPTextEncoder
from afford.errors import AffordError


class PromptLearner(nn.Module):
    """CoOp prompt learner producing one text feature per class.

    Args:
        text_encoder: the CLIP text tower (frozen or trainable; gradients reach ``ctx`` either way).
        classnames: class names in label order; underscores become spaces (``cut_with`` ->
            "cut with"), as WSMA does.
        n_ctx: number of learnable context vectors (WSMA: 16).
        init_std: std of their normal initialisation (WSMA: 0.02).
        template: the text after the context, with ``{name}`` (WSMA: ``"{name}."``). The brief's
            ``"X"*n_ctx + " {name}."`` is realised as ``n_ctx`` *space-separated* X's so each is
            one token; a glued ``XXXX`` would be a few BPE tokens, not ``n_ctx``.

    Buffers ``token_prefix`` ``(C, 1, W)`` (SOT) and ``token_suffix`` ``(C, L-1-n_ctx, W)``
    (name, period, EOT, padding) are persistent, as in WSMA's released files, where they were
    computed from a random embedding and must be loaded verbatim (wsma.md §3.3).
    """

    def __init__(
        self,
        text_encoder: CLIPTextEncoder,
        classnames: Sequence[str],
        n_ctx: int = 16,
        init_std: float = 0.02,
        template: str = "{name}.",
    ) -> None:
        super().__init__()
        if not classnames:
            raise AffordError("classnames: at least one class is needed")
        # Not registered as a submodule: the owning method holds the tower, so its weights are
        # saved once and the state dict matches WSMA's ``prompt_learner.{ctx, token_prefix,
        # token_suffix}``.
        object.__setattr__(self, "text_encoder", text_encoder)
        self.n_ctx = n_ctx
        self.classnames = [c.replace("_", " ") for c in classnames]
        prompts = [" ".join(["X"] * n_ctx) + " " + template.format(name=c) for c in self.classnames]
        ids = text_encoder.tokenize(prompts)
        placeholder = ids[:, 1 : 1 + n_ctx]
        if n_ctx and not bool((placeholder == placeholder[0, 0]).all()):
            raise AffordError(f"n_ctx: the tokenizer does not map 'X' to one token each (got {placeholder[0].tolist()})")
        if bool((ids.argmax(dim=-1) <= n_ctx).any()):
            raise AffordError(f"n_ctx: {n_ctx} context tokens leave no room for the class names")
        width = text_encoder.width
        self.ctx = nn.Parameter(torch.empty(n_ctx, width).normal_(std=init_std))
        emb = text_encoder.token_embedding
        with torch.no_grad():
            e = emb(ids.to(emb.weight.device)).float()
        self.register_buffer("token_prefix", e[:, :1].clone())
        self.register_buffer("token_suffix", e[:, 1 + n_ctx :].clone())
        self.register_buffer("tokenized_prompts", ids, persistent=False)

    def prompt_embeddings(self) -> Tensor:
        """``(C, L, W)``: SOT, the shared context, then the class-specific suffix."""
        c = self.token_prefix.shape[0]
        ctx = self.ctx.unsqueeze(0).expand(c, -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)

    def forward(self) -> Tensor:
        """``(C, E)`` text features, one per class (not L2-normalised)."""
        return self.text_encoder.encode_prompt_embeddings(self.prompt_embeddings(), self.tokenized_prompts)


def plain_prompts(classnames: Sequence[str], template: str = "an item to {aff} with") -> list[str]:
    """Fill ``template`` per class, SelectiveCL style (selectivecl.md §4 step 1).

    The raw class string is used (underscores kept, e.g. "an item to cut_with"), and a trailing
    " with" in the template is dropped when the class name already contains "with".
    """
    out = []
    for name in classnames:
        t = template
        if "with" in name and t.rstrip().endswith(" with"):
            t = t.rstrip()[: -len(" with")]
        out.append(t.format(aff=name))
    return out
