"""Optional post-hoc refinement of heatmaps: AffinityNet-style random walk and a dense CRF.

See affinity.md §12: ``AffinityRefiner`` refines any method's (B, h, w) CAMs with affinities from
a trained :class:`AffinityHead` or from frozen features; :class:`AffinityHeadTraining` is the head
as the engine trains it on a frozen run's CAMs; ``dense_crf`` is a pure-PyTorch mean-field CRF.
"""

from afford.refine.affinity_head import AffinityHead, DiscAffinity, disc_affinity, pair_affinity, pair_labels
from afford.refine.affinity_loss import affinity_loss
from afford.refine.crf import IRN_CRF, PSA_CRF, CRFParams, dense_crf
from afford.refine.head_training import AffinityHeadConfig, AffinityHeadTraining
from afford.refine.labels import affinity_labels
from afford.refine.random_walk import propagate
from afford.refine.refiner import AffinityRefiner

__all__ = [
    "IRN_CRF",
    "PSA_CRF",
    "AffinityHead",
    "AffinityHeadConfig",
    "AffinityHeadTraining",
    "AffinityRefiner",
    "CRFParams",
    "DiscAffinity",
    "affinity_labels",
    "affinity_loss",
    "dense_crf",
    "disc_affinity",
    "pair_affinity",
    "pair_labels",
    "propagate",
]
