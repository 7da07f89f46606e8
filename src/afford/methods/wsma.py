"""WSMA (Xu et al., AAAI 2024): multi-view affordance grounding with text prompts and NMF.

Composition (methods.md §2): frozen DINO keys of the last two blocks -> ``aff_proj`` Mlp (no
residual). Exocentric views: a joint NMF ``Hamburger`` -> ``aff_exo_proj``. Egocentric view:
an ``attnpool`` gives a global embedding (aligned with CoOp prompt features, ``L_clip``), patch
embeddings (a pixel-text gate on the features) and a patch affinity (inference refinement);
then ``aff_ego_proj``. A shared linear ``fc`` classifies both views, and its class rows weight
the channels for the CAMs and for ``L_d``/``L_lrela``. Attribute names equal the official
checkpoint's (checkpoints/wsma.md) so :mod:`afford.importers` maps released files by prefix.

Deliberate deviation (methods.md §9 #4): the reference L2-normalises the patch embeddings of
the gate along the *batch* axis, so a map depends on its batch-mates (and is a sign vector at
batch 1). afford normalises along channels; ``faithful=True`` restores the reference behaviour
(batch axis in training, one image at a time at test like ``test.py``) together with its
"prompt embeddings + token_embedding[ids]" quirk (wsma.md §4 step 3), for released checkpoints.

A consequence of the quirk, also a deviation by default: the reference's class-name tokens enter
through the fine-tuned ``token_embedding`` (trained at 2x), whereas afford's prompt buffers hold
them as taken from the initial CLIP table (frozen), like CoOp. ``faithful`` mode reproduces the
reference's *inference* on released weights; its training differs in one more way (the reference
builds the prefix/suffix from a random N(0, 1) embedding, afford from the CLIP table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from afford.backbones import create_backbone, create_text_encoder
from afford.backbones.clip_text import missing_vocabulary
from afford.errors import AffordError
from afford.global_batch import sum_over_processes
from afford.losses.wsma import wsma_losses
from afford.methods.base import LabelSpace, Method, ParamGroup
from afford.modules.attention_pool import AttentionPool2d
from afford.modules.attention_refine import refine_cam
from afford.modules.heads import Mlp, conv_bn_relu_stack, map_to_tokens, tokens_to_map
from afford.modules.nmf import Hamburger
from afford.modules.param_groups import groups_from_rules
from afford.modules.prompts import PromptLearner


@dataclass
class WSMAConfig:
    """Paper/reference defaults (``models/model.py``, ``train.py``, ``test.py``).

    The training recipe (13 epochs, batch 10, SGD lr 1e-3, no scheduler, consecutive exocentric
    windows) belongs to the shared ``train``/``data`` sections: it is the packaged preset
    ``configs/wsma_seen.yaml``, which the registry names as WSMA's recipe.
    """

    backbone: str = "dino_vits16"
    backbone_weights: str | None = None
    train_backbone: bool = False  # frozen in the paper; the offline demo trains a tiny ViT
    key_layers: tuple[int, ...] = (-2, -1)  # blocks 11 and 12 of 12 (1-based), concatenated
    text_encoder: str = "clip_rn50"
    text_weights: str | None = None  # OpenAI RN50.pt (only the text tower is used)
    allow_random_text: bool = False  # train a full-size text tower from random weights on purpose
    tokenizer: str | None = None  # bpe .gz/dir/hub name; default: $AFFORD_CLIP_BPE, the weights' files, the hub
    train_text: bool = True  # WSMA fine-tunes the CLIP text tower (at 2x LR)
    n_ctx: int = 16
    ctx_init_std: float = 0.02
    n_exo: int = 3
    nmf_dim: int = 512
    nmf_rank: int = 64
    nmf_train_steps: int = 6
    nmf_eval_steps: int = 7
    nmf_eta: float = 0.9
    nmf_bn_momentum: float = 3e-4
    attnpool_heads: int = 64  # output width = the text embedding width (1024 for RN50)
    grid: int = 14  # feature grid side (224 / 16); fixes the attnpool positional embedding
    cls_weight: float = 1.0
    clip_weight: float = 1.0
    d_weight: float = 0.5
    lrela_weight: float = 0.5
    refine_threshold: float = 0.2
    refine_rounds: int = 3
    faithful: bool = False
    normalize_gate: str = "channel"  # "channel" (afford) | "batch" (reference; forced by faithful)


class _PlaceholderIds:
    """Stand-in tokenizer when no CLIP vocabulary is available offline at construction.

    It yields structurally valid ids (SOT, n_ctx placeholders, one name token, EOT) so the prompt
    buffers can be built without the network; the real ids are the persistent ``prompt_ids``
    buffer of a saved run (imported runs carry them) or come from :meth:`WSMA.tokenize_prompts`,
    and using the model before either is refused.
    """

    def __init__(self, n_ctx: int, vocab: int) -> None:
        self.n_ctx, self.vocab = n_ctx, vocab

    def __call__(self, texts: Sequence[str], context_length: int = 77) -> torch.Tensor:
        ids = torch.zeros(len(texts), context_length, dtype=torch.long)
        ids[:, 0] = self.vocab - 2
        ids[:, 1 : 1 + self.n_ctx] = 1
        ids[:, 1 + self.n_ctx] = 2
        ids[:, 2 + self.n_ctx] = self.vocab - 1
        return ids


class WSMA(Method):
    """WSMA with the official module names (``backbone`` stands for ``vit_model``)."""

    name = "wsma"
    #: ``refined``: the Sinkhorn-refined map in [0, 1] that the paper reports (methods.md §2.4);
    #: ``raw``: the unrefined CAM.
    outputs = {"refined": "scores", "raw": "logits"}
    default_output = "refined"

    def __init__(self, cfg: WSMAConfig, labels: LabelSpace | Sequence[str]) -> None:
        super().__init__(labels)
        if cfg.normalize_gate not in ("channel", "batch"):
            raise AffordError(f"model.normalize_gate: expected 'channel' or 'batch', got {cfg.normalize_gate!r}")
        self.cfg = cfg
        self.gate_axis = "batch" if cfg.faithful else cfg.normalize_gate
        self.backbone = create_backbone(cfg.backbone, weights=cfg.backbone_weights, layers=cfg.key_layers,
                                        trainable=cfg.train_backbone, return_tokens=False)
        dim = self.backbone.embed_dim
        if dim % cfg.attnpool_heads:
            raise AffordError(f"model.attnpool_heads: {cfg.attnpool_heads} heads do not divide the {dim} feature "
                              f"channels of {cfg.backbone}")
        self.text_encoder = create_text_encoder(cfg.text_encoder, weights=cfg.text_weights,
                                                trainable=cfg.train_text, tokenizer=cfg.tokenizer)
        self._ids_pending = self.text_encoder.tokenizer is None
        if self._ids_pending:
            self.text_encoder.tokenizer = _PlaceholderIds(cfg.n_ctx, int(self.text_encoder.model.config.vocab_size))
        self.prompt_learner = PromptLearner(self.text_encoder, self.classnames, n_ctx=cfg.n_ctx,
                                            init_std=cfg.ctx_init_std)
        # The token ids are part of the model: they fix the EOT position (and, faithfully, are
        # embedded again), and keeping them lets a saved run predict without the vocabulary.
        self.register_buffer("prompt_ids", self.prompt_learner.tokenized_prompts.clone())
        if self._ids_pending:
            self.text_encoder.tokenizer = None  # never tokenise real text with the placeholder
        self.register_load_state_dict_post_hook(self._ids_loaded)

        kdim = dim * len(self.backbone.layers)
        self.aff_proj = Mlp(kdim, kdim, dim)
        self.Hamburger = Hamburger(dim, n=cfg.n_exo, dim=cfg.nmf_dim, rank=cfg.nmf_rank,
                                   train_steps=cfg.nmf_train_steps, eval_steps=cfg.nmf_eval_steps,
                                   eta=cfg.nmf_eta, bn_momentum=cfg.nmf_bn_momentum)
        self.aff_exo_proj = conv_bn_relu_stack(dim, 1)
        self.aff_ego_proj = conv_bn_relu_stack(dim, 1)
        self.attnpool = AttentionPool2d(cfg.grid, dim, cfg.attnpool_heads, self.text_encoder.embed_dim)
        self.fc = nn.Linear(dim, len(self.classnames))

    def check_training(self) -> None:
        """WSMA fine-tunes OpenAI CLIP RN50's text tower (methods.md §2.1), whose file no hub serves:
        a preset without ``model.text_weights`` trained it from random weights without a word."""
        if self.cfg.text_weights is None and not self.cfg.text_encoder.startswith("tiny") \
                and not self.cfg.allow_random_text:
            raise AffordError(f"model.text_weights: WSMA fine-tunes the pretrained CLIP {self.cfg.text_encoder} text "
                              "tower, and no weights are given, so it would train from random weights; pass --set "
                              "model.text_weights=/path/RN50.pt (OpenAI's file), or --set model.allow_random_text=true "
                              "to train a random tower on purpose")

    @staticmethod
    def _ids_loaded(module: nn.Module, incompatible: Any) -> None:
        """After a load that supplied ``prompt_ids``, the placeholder ids are gone."""
        if not any(k.endswith("prompt_ids") for k in incompatible.missing_keys):
            module._ids_pending = False  # type: ignore[assignment]

    def tokenize_prompts(self) -> None:
        """Replace placeholder ids by the real ones (may fetch the hub tokenizer, once).

        Rebuilds ``prompt_ids`` and the prompt learner's ids and prefix/suffix buffers as if the
        vocabulary had been there at construction; ``ctx`` is kept. Raises the one-line
        'no vocabulary' AffordError.
        """
        self.text_encoder.require_tokenizer()
        with torch.random.fork_rng(devices=[]):  # the throwaway learner's ctx init must not shift the RNG
            fresh = PromptLearner(self.text_encoder, self.classnames, n_ctx=self.cfg.n_ctx,
                                  init_std=self.cfg.ctx_init_std)
        pl = self.prompt_learner
        with torch.no_grad():
            for name in ("token_prefix", "token_suffix", "tokenized_prompts"):
                getattr(pl, name).copy_(getattr(fresh, name))
            self.prompt_ids.copy_(fresh.tokenized_prompts)
        self._ids_pending = False

    @property
    def logit_scale(self) -> nn.Parameter:
        """CLIP's log temperature (the root ``logit_scale`` of the official file)."""
        return self.text_encoder.logit_scale

    # -- features ---------------------------------------------------------------------------
    def _project(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels (N, 3, H, W) -> ``aff_proj`` of the concatenated keys, (N, D, h, w)."""
        keys = torch.cat(self.backbone(images).keys, dim=1)
        if not self.cfg.train_backbone:
            keys = keys.detach()
        _, _, h, w = keys.shape
        if (h, w) != (self.cfg.grid, self.cfg.grid):
            raise AffordError(f"model.grid: the images give a {h}x{w} feature grid, the model expects "
                              f"{self.cfg.grid}x{self.cfg.grid}")
        return tokens_to_map(self.aff_proj(map_to_tokens(keys)), h, w)

    def text_features(self, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt features of ``classes`` (default: all), (C', E), not normalised."""
        if self._ids_pending:
            raise AffordError(f"{missing_vocabulary(self.cfg.text_encoder)} (needed to tokenise the WSMA prompts)")
        x = self.prompt_learner.prompt_embeddings()
        ids = self.prompt_ids
        if classes is not None:
            x, ids = x[classes], ids[classes]
        if self.cfg.faithful:  # reference quirk: the id embeddings are added on top (wsma.md §4)
            x = x + self.text_encoder.token_embedding(ids)
        return self.text_encoder.encode_prompt_embeddings(x, ids)

    def _gate(self, feat: torch.Tensor, patches: torch.Tensor, text: torch.Tensor,
              global_batch: bool = False) -> torch.Tensor:
        """Pixel-text gate: ``feat ⊙ sigmoid(l2n_hw(⟨n(patch), l2n(t)⟩)) + feat``.

        ``feat`` (B, D, h, w), ``patches`` (B, h·w, E), ``text`` (B, E) for each sample's class.
        ``n`` is the channel L2 norm, or the reference's batch-axis norm (see module docstring),
        taken over the global batch when ``global_batch`` (training; inference never reduces
        across processes: rank 0 evaluates alone and must not wait for the others).
        """
        if self.gate_axis == "batch":
            sq = patches.pow(2).sum(0, keepdim=True)
            n_patches = patches / (sum_over_processes(sq) if global_batch else sq).sqrt().clamp_min(1e-12)
        else:
            n_patches = F.normalize(patches, dim=-1)
        sim = (n_patches * F.normalize(text, dim=-1)[:, None]).sum(-1)  # (B, h·w)
        gate = torch.sigmoid(F.normalize(sim, dim=1)).view(feat.shape[0], 1, *feat.shape[-2:])
        return gate * feat + feat

    def _cam(self, feat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CAM_y (§0.4): channel mean of ``fc.weight[y] ⊙ feat``; (B, D, h, w) -> (B, h, w)."""
        return (self.fc.weight[labels][:, :, None, None] * feat).mean(1)

    # -- training ---------------------------------------------------------------------------
    def forward_train(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        ego, exo, y = batch["ego"], batch["exo"], batch["label"]
        b, n = exo.shape[:2]
        if n != self.cfg.n_exo:
            raise AffordError(f"data.n_exo: WSMA's Hamburger was built for {self.cfg.n_exo} views, got {n}")
        proj = self._project(torch.cat([ego, exo.flatten(0, 1)]))
        exo_feat = self.aff_exo_proj(self.Hamburger(proj[b:]))  # (B·n, D, h, w)
        text = self.text_features()  # (C, E)
        pooled = self.attnpool(proj[:b])
        ego_feat = self.aff_ego_proj(self._gate(proj[:b], pooled.patch_embed, text[y], global_batch=True))
        weights = {"cls": self.cfg.cls_weight, "clip": self.cfg.clip_weight,
                   "d": self.cfg.d_weight, "lrela": self.cfg.lrela_weight}
        return wsma_losses(
            ego_logits=self.fc(ego_feat.mean((2, 3))),
            exo_logits=self.fc(exo_feat.mean((2, 3))).view(b, n, -1),
            global_embed=pooled.global_embed, text_embed=text, logit_scale=self.logit_scale.exp(),
            ego_feat=ego_feat, exo_feat=exo_feat.view(b, n, *exo_feat.shape[1:]),
            fc_weight=self.fc.weight, labels=y, weights=weights,
        )

    # -- inference ----------------------------------------------------------------------------
    def raw_cam(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unrefined CAM_y (B, h, w) and the attention-pool patch attention (B, h·w, h·w)."""
        proj = self._project(images)
        classes, inverse = torch.unique(labels, return_inverse=True)
        text = self.text_features(classes)[inverse]
        pooled = self.attnpool(proj)
        if self.gate_axis == "batch":
            # test.py always runs one image at a time: the batch axis has length 1 (sign vectors).
            gated = torch.cat([self._gate(proj[i : i + 1], pooled.patch_embed[i : i + 1], text[i : i + 1])
                               for i in range(proj.shape[0])])
        else:
            gated = self._gate(proj, pooled.patch_embed, text)
        return self._cam(self.aff_ego_proj(gated), labels), pooled.attn

    @torch.no_grad()
    def predict(self, images: torch.Tensor, labels: torch.Tensor, output: str | None = None) -> torch.Tensor:
        """``refined`` (default): the refined map (methods.md §2.4), (B, h, w) in [0, 1];
        ``raw``: the unrefined CAM."""
        cam, attn = self.raw_cam(images, labels)
        if self.resolve_output(output) == "raw":
            return cam
        return refine_cam(cam, attn, self.cfg.refine_threshold, self.cfg.refine_rounds)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The DINO keys of the blocks WSMA reads (refinement's affinity features)."""
        with torch.no_grad():
            return [k.float() for k in self.backbone(images).keys]

    def param_groups(self) -> list[ParamGroup]:
        """§2.3: weights x1, biases x2, other params (prompt ctx, positional embedding, logit
        scale) x2; ``aff_proj.fc1/fc2`` and ``fc`` x10/x20; the CLIP text tower x2."""
        rules = [("text_encoder", 2.0, 2.0), ("aff_proj.fc1", 10.0, 20.0), ("aff_proj.fc2", 10.0, 20.0),
                 ("fc", 10.0, 20.0)]
        if self.cfg.train_backbone:
            rules.insert(0, ("backbone", 1.0, 1.0))  # not in the paper: the backbone is frozen there
        return groups_from_rules(self, rules, other_mult=2.0)
