"""afford: weakly supervised affordance grounding and CLIP-based HOI detection."""

__version__ = "0.1.0"
