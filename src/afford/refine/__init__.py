"""Optional post-hoc refinement of heatmaps: AffinityNet-style random walk and a dense CRF.

See affinity.md §12: ``AffinityRefiner`` refines any method's (B, h, w) CAMs with affinities from
a trained :class:`AffinityHead` or from frozen features; ``train_affinity_head`` trains the head
from a frozen method's CAMs; ``dense_crf`` is a pure-PyTorch mean-field CRF.
"""

from afford.refine.affinity_head import AffinityHead, DiscAffinity, disc_affinity, pair_affinity, pair_labels
from afford.refine.affinity_loss import affinity_loss
from afford.refine.crf import IRN_CRF, PSA_CRF, CRFParams, dense_crf
from afford.refine.labels import affinity_labels
from afford.refine.random_walk import propagate
from afford.refine.refiner import AffinityRefiner
from afford.refine.train import AffinityTrainConfig, train_affinity_head

__all__ = [
    "IRN_CRF",
    "PSA_CRF",
    "AffinityHead",
    "AffinityRefiner",
    "AffinityTrainConfig",
    "CRFParams",
    "DiscAffinity",
    "affinity_labels",
    "affinity_loss",
    "dense_crf",
    "disc_affinity",
    "pair_affinity",
    "pair_labels",
    "propagate",
    "train_affinity_head",
]
