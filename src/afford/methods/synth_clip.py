"""A tiny CLIP trained on SynthAGD's image-level labels, so the offline demo's SelectiveCL has an
object affinity that means something (no CLIP weights can be downloaded offline).

Not a published method: afford's stand-in for OpenAI's CLIP pretraining, trained on the same weak
labels every WSAG method gets (the affordance of each training image). Both towers of the tiny CLIP
train jointly: the image embedding is the mean of the *dense* ClearCLIP patch embeddings (the
very tokens SelectiveCL reads), contrasted with the C action prompts for egocentric images and the
C entity prompts for exocentric ones (softmax over the C prompts at CLIP's learned temperature).
``model.pooling=lse`` trains the patches as SelectiveCL reads them instead: each patch's *cosine*
with a prompt, pooled over the patches by log-mean-exp at the same temperature. On the demo's data
its affinity localises (3 seeds, 6 epochs: KLD 3.57-3.68, NSS 0.84-1.11, where the mean's 2 epochs
give 3.79-3.96, NSS -0.46-0.56) but needs 6 epochs where the mean needs 2 (docs/research-notes.md).
Its prediction is the affinity map itself (cosine of each patch with the action prompt), so
``afford eval`` scores how well the affinity localises. SelectiveCL loads a run of it through
``model.clip_weights`` and records so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from afford.backbones import create_backbone, create_text_encoder
from afford.errors import AffordError
from afford.methods.base import LabelSpace, Method, ParamGroup
from afford.modules.clip_affinity import action_prompt, cosine_map, entity_prompt
from afford.modules.param_groups import groups_from_rules

RECIPE = ("trained here by afford's synth_clip recipe: both tiny CLIP towers on the split's training images "
          "and their affordance labels ({pooling} vs action/entity prompts)")
POOLING_WORDS = {"mean": "mean ClearCLIP patch embedding", "lse": "log-mean-exp of ClearCLIP patch cosines"}


@dataclass
class SynthCLIPConfig:
    clip: str = "tiny_clip"
    clip_input_stats: str = "imagenet"  # the tensor SelectiveCL feeds CLIP (its reference quirk)
    tokenizer: str | None = None
    pooling: str = "mean"  # "mean" (embedding of the mean patch) | "lse" (log-mean-exp of patch cosines)


class SynthCLIP(Method):
    """Trainable ``clip`` (ClearCLIP image tower) and ``text_encoder``, named as in SelectiveCL."""

    name = "synth_clip"
    outputs = {"affinity": "logits"}
    default_output = "affinity"

    def __init__(self, cfg: SynthCLIPConfig, labels: LabelSpace | Sequence[str]) -> None:
        super().__init__(labels)
        if cfg.pooling not in POOLING_WORDS:
            raise AffordError(f"model.pooling: expected one of {', '.join(POOLING_WORDS)}, got {cfg.pooling!r}")
        self.cfg = cfg
        self.clip = create_backbone(cfg.clip, trainable=True, clearclip=True, input_stats=cfg.clip_input_stats)
        self.text_encoder = create_text_encoder(cfg.clip, trainable=True, tokenizer=cfg.tokenizer)
        c = len(self.classnames)
        prompts = [action_prompt(n) for n in self.classnames] + [entity_prompt(n) for n in self.classnames]
        self.register_buffer("prompt_ids", self.text_encoder.tokenize(prompts))
        self._c = c

    def _text(self) -> tuple[torch.Tensor, torch.Tensor]:
        te = self.text_encoder
        feats = te.encode_prompt_embeddings(te.token_embedding(self.prompt_ids), self.prompt_ids)
        return feats[: self._c], feats[self._c :]

    def _logits(self, tokens: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` logits of images' patch embeddings ``tokens`` ``(N, E, h, w)`` against the C prompt
        features ``text``, pooled over the patches by ``cfg.pooling``."""
        text = F.normalize(text, dim=-1)
        if self.cfg.pooling == "mean":
            return scale * F.normalize(tokens.mean((2, 3)), dim=-1) @ text.T
        cos = torch.einsum("nep,ce->ncp", F.normalize(tokens.flatten(2), dim=1), text)
        return torch.logsumexp(scale * cos, dim=-1) - math.log(cos.shape[-1])

    def forward_train(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        ego, exo, y = batch["ego"], batch["exo"], batch["label"]
        b, n = exo.shape[:2]
        tokens = self.clip(torch.cat([ego, exo.flatten(0, 1)])).tokens[-1]
        t_action, t_entity = self._text()
        scale = self.text_encoder.logit_scale.exp().clamp(max=100)
        l_ego = F.cross_entropy(self._logits(tokens[:b], t_action, scale), y)
        l_exo = F.cross_entropy(self._logits(tokens[b:], t_entity, scale), y.repeat_interleave(n))
        return {"loss": l_ego + l_exo, "ego": l_ego, "exo": l_exo}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, labels: torch.Tensor, output: str | None = None) -> torch.Tensor:
        """The egocentric affinity ``cos(patch, t_action[label])`` SelectiveCL would compute, ``(B, h, w)``."""
        self.resolve_output(output)
        return cosine_map(self.clip(images).tokens[-1], self._text()[0][labels])

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return [self.clip(images).tokens[-1].float()]

    def param_groups(self) -> list[ParamGroup]:
        """Both towers at the base rate (weights ×1, biases ×2)."""
        return groups_from_rules(self, [])


def is_run_dir(source: str | None) -> bool:
    """Whether ``source`` is an afford run directory (it holds ``run.json``)."""
    from afford.checkpoint import RUN_FILE

    return bool(source) and (Path(str(source)) / RUN_FILE).is_file()


def load_clip_run(source: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """The two towers of a finished ``synth_clip`` run: ``(clip_state, text_state, provenance)``.

    ``text_state`` includes ``logit_scale``; provenance carries the run's path, the sha256 of its
    weights and its ``model`` config (the consumer checks the tower name against its own).
    """
    from afford.checkpoint import read_run_weights

    sd, info = read_run_weights(Path(source), "synth_clip", "model.clip_weights")
    clip = {k[len("clip."):]: v for k, v in sd.items() if k.startswith("clip.")}
    text = {k[len("text_encoder."):]: v for k, v in sd.items() if k.startswith("text_encoder.")}
    pooling = POOLING_WORDS.get(info["model"].get("pooling", "mean"), "?")
    return clip, text, {**info, "how": RECIPE.format(pooling=pooling)}


def load_clip_towers(clip: torch.nn.Module, text_encoder: torch.nn.Module, source: str, clip_name: str) -> dict[str, Any]:
    """Load a ``synth_clip`` run's two towers strictly into ``clip`` and ``text_encoder`` (the consumer's
    ``model.clip`` must name the same towers); returns the provenance to record."""
    from afford.backbones.convert import load_strict

    clip_state, text_state, info = load_clip_run(source)
    theirs = info.pop("model").get("clip")
    if theirs != clip_name:
        raise AffordError(f"model.clip_weights: the run {source} trained {theirs!r} towers but this config has "
                          f"model.clip={clip_name!r}")
    load_strict(clip, clip_state, f"model.clip_weights={source} (image tower)")
    load_strict(text_encoder, text_state, f"model.clip_weights={source} (text tower)")
    return info
