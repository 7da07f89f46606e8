"""The refinement choices and propagation defaults, apart from the code that uses them, so that the
CLI can offer them without importing the model stack (``afford --help`` took 5 s, 2.8 s of it
transformers)."""

#: ``--refine`` choices: the trained head, or the training-free affinity.
REFINERS: tuple[str, ...] = ("affinity", "affinity-free")
# Propagation defaults for a 14x14 grid. t = 256 over-smooths 196 nodes (affinity.md §12.3). These
# were chosen on held-out SynthAGD images (test indices 4-7 of an 8-per-pair generation, disjoint from
# the 4 the demo reports), from t in {2, 4, 16}, lambda in {0, 0.5}, gamma in {3, 5}: never on a
# test set that is reported.
DEFAULT_STEPS = 16
DEFAULT_BLEND = 0.5
DEFAULT_RADIUS = 5
DEFAULT_EPOCHS = 3
