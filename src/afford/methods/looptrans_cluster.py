"""LoopTrans's cluster module: train it here without labels, or load the authors' release.

LoopTrans needs a frozen ACSeg-style cluster module (methods.md §3.6). The authors distribute
``cluster_{seen,unseen}.pth`` but no training script, and ACSeg has no public code. afford's
recipe (``configs/looptrans_cluster_seen.yaml``) trains :class:`ClusterModule` on the frozen
DINO keys of a split's training images with ACSeg's soft-modularity objective — *afford's own
recipe*, validated by the pseudo-masks it yields (``benchmarks/bench_looptrans_cluster.py``),
not by parity with the release. :func:`load_cluster_weights` reads any of the three sources
and says which it read (path + sha256), for the LoopTrans run record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from afford.backbones import create_backbone
from afford.errors import AffordError
from afford.labels import LabelSpace
from afford.losses.looptrans import modularity_loss
from afford.methods.base import ParamGroup, Trainable
from afford.modules.cluster import ClusterModule
from afford.modules.param_groups import groups_from_rules

RECIPE = "trained here by afford's recipe (ACSeg soft modularity on frozen DINO keys, methods.md §3.6)"


@dataclass
class LoopTransClusterConfig:
    """afford's cluster-pretraining recipe (the release's architecture; training unpublished)."""

    backbone: str = "dino_vits16"
    backbone_weights: str | None = None
    key_layer: int = -1
    num_tokens: int = 4
    num_layers: int = 8
    num_heads: int = 8
    stale_queries: bool = True  # the reference forward (ClusterModule docstring)


class LoopTransCluster(Trainable):
    """Frozen DINO keys -> :class:`ClusterModule`, trained with :func:`modularity_loss`."""

    name = "looptrans_cluster"

    def __init__(self, cfg: LoopTransClusterConfig, labels: LabelSpace | Sequence[str] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = create_backbone(cfg.backbone, weights=cfg.backbone_weights, layers=(cfg.key_layer,),
                                        return_tokens=False)
        self.cluster = ClusterModule(self.backbone.embed_dim, cfg.num_tokens, cfg.num_layers, cfg.num_heads,
                                     stale_queries=cfg.stale_queries)

    def pixels(self, images: Tensor) -> Tensor:
        """Frozen last-block keys as ``(B, h*w, D)`` pixel descriptors."""
        return self.backbone(images).keys[0].detach().flatten(2).transpose(1, 2)

    def forward_train(self, batch: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        pixels = self.pixels(batch["image"])
        scores = self.cluster(pixels)
        loss = modularity_loss(pixels, scores)
        used = torch.bincount(scores.argmax(-1).flatten(), minlength=self.cluster.num_tokens)
        return {"loss": loss, "modularity": -loss.detach(),
                "clusters_used": (used > 0).sum().float()}

    def param_groups(self) -> list[ParamGroup]:
        """Only the cluster module trains (the backbone is frozen): one group per kind, ×1."""
        return groups_from_rules(self, [("cluster", 1.0, 1.0)])


# ----------------------------------------------------------------------------- loading weights
def load_cluster_weights(source: str | Path) -> tuple[dict[str, Tensor], dict[str, Tensor] | None, dict[str, Any]]:
    """Read cluster-module weights from any of its three sources.

    * an afford run of ``looptrans_cluster`` (a directory with ``run.json``): its ``cluster.*``
      weights, plus its backbone weights (to check, or copy into a random-init backbone);
    * a released ``cluster_{seen,unseen}.pth`` (keys ``tokens.weight``, ``cross_attn_layers.*``);
    * a released LoopTrans training checkpoint (its ``cluster.*`` entries).

    Returns ``(cluster_state, backbone_state or None, provenance)``; provenance names the
    source, its sha256 and how the weights were obtained (an afford run's also carries its
    ``model`` config, for the consumer to check against its own).
    """
    from afford.checkpoint import file_sha256, read_run_weights

    path = Path(source)
    if not path.exists():
        raise AffordError(f"model.cluster_weights: {source} does not exist; LoopTrans needs its frozen cluster module: "
                          "train it first (afford train looptrans_cluster_<split> --out RUN, e.g. "
                          "looptrans_cluster_synthagd_demo for the demo presets) and pass --set model.cluster_weights=RUN, "
                          "or give a released cluster_{seen,unseen}.pth")
    if path.is_dir():
        sd, info = read_run_weights(path, "looptrans_cluster", "model.cluster_weights")
        cluster = {k[len("cluster."):]: v for k, v in sd.items() if k.startswith("cluster.")}
        backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        return cluster, backbone, {**info, "how": RECIPE}
    from afford.importers import read_official_file

    sd = read_official_file(path)
    if any(k.startswith("cluster.") for k in sd):
        cluster = {k[len("cluster."):]: v.float() for k, v in sd.items() if k.startswith("cluster.")}
        how = "the cluster.* entries of a released LoopTrans checkpoint"
    else:
        cluster = {k: v.float() for k, v in sd.items()}
        how = "a released cluster module file (SooLab/LoopTrans ckpts/cluster_*.pth)"
    if "tokens.weight" not in cluster:
        raise AffordError(f"model.cluster_weights: {path} holds no cluster module (no 'tokens.weight' or "
                          "'cluster.tokens.weight'); expected cluster_seen.pth, cluster_unseen.pth, a LoopTrans "
                          "checkpoint or an afford looptrans_cluster run directory")
    return cluster, None, {"kind": "file", "path": str(path.resolve()), "sha256": file_sha256(path), "how": how}
