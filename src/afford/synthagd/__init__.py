"""SynthAGD: a seeded procedural affordance benchmark written in the AGD20K layout (synthagd.md).

Dataset *generators* live here, apart from the dataset *readers* in ``afford.data``: the readers
define the tree (``afford.data.layout``) and read any AGD20K-format dataset, real or synthetic; this
package only writes one, and takes the tree layout from the reader instead of retyping it. A SynthHOI
generator will join it.

    from afford.synthagd import generate
    generate("synthagd_out", split="seen", seed=0)   # same arguments -> byte-identical files

Modules: ``generate`` (scenes, GT heatmaps, the tree writer), ``world`` (vocabulary, seeded object
geometry and palettes), ``shapes`` (primitives, rasterisation), ``render`` (textures, backgrounds,
placement), ``actor`` (hands, arms, bodies and tool targets of the exocentric images).
"""

from __future__ import annotations

from afford.synthagd.generate import SPLITS, VERSION, generate, gt_heatmap, image_rng, render_ego, render_exo
from afford.synthagd.world import UNSEEN_OBJECTS, VOCAB, make_world, split_pairs

__all__ = [
    "SPLITS",
    "UNSEEN_OBJECTS",
    "VERSION",
    "VOCAB",
    "generate",
    "gt_heatmap",
    "image_rng",
    "make_world",
    "render_ego",
    "render_exo",
    "split_pairs",
]
