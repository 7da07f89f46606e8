"""``afford app``: a web page to try and compare the trained models on one's own photos.

:mod:`~afford.app.registry` loads the runs, :mod:`~afford.app.answers` computes each tab's answer
with the library's predictors (no Gradio needed), :mod:`~afford.app.ui` is the Gradio page. Gradio
is an optional extra (``pip install -e '.[app]'``).
"""

from afford.app.answers import affordance_answer, compare_answer, hoi_answer, open_image
from afford.app.registry import Registry, demo_runs, load_registry

__all__ = ["Registry", "affordance_answer", "compare_answer", "demo_runs", "hoi_answer", "load_registry",
           "open_image"]
