"""The runs a web app serves: loaded once, each offered under every way it can answer.

A run directory becomes one *model* per output it can give (SelectiveCL's calibrated and raw
maps are two models) plus one with AffinityNet refinement when the run holds a trained affinity
head. Predictors are the library's own (:class:`afford.predictor.Predictor`,
:class:`afford.hoi.predictor.HOIPredictor`), so the app has no second inference path. A run that
does not load is kept with its one-line reason, for the page to show, instead of stopping the app.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afford.errors import AffordError

log = logging.getLogger(__name__)

#: at most this many example images per run are offered (one per affordance / image, in order)
MAX_EXAMPLES = 8
#: request folders of downloads kept on disk (a page shows one answer at a time, and gradio keeps its own
#: copy of what it served: an "all" answer of a large photo is ~0.3 GB)
KEEP_ANSWERS = 4


def _device(run: Any) -> str:
    return str(next(run.method.parameters()).device)


@dataclass
class AffordanceModel:
    """One way to ground affordances: a run, one of its outputs, optionally refined."""

    name: str
    run: Any  # LoadedRun
    output: str
    refine: str | None = None
    _predictor: Any = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.run.classes

    def predictor(self) -> Any:
        """The run's :class:`~afford.predictor.Predictor` for this output (built on first use)."""
        if self._predictor is None:
            from afford.engine.refinement import refiner_for_run
            from afford.predictor import Predictor

            refine = refiner_for_run(self.run, self.refine) if self.refine else None
            self._predictor = Predictor(self.run, device=_device(self.run), refine=refine, output=self.output)
        return self._predictor


@dataclass
class HOIModel:
    """A CLIP4HOI run with the detections file its cached-detector setting needs, if any."""

    name: str
    run: Any
    detections: Path | None
    _predictor: Any = None

    @property
    def test_image_dir(self) -> Path | None:
        """Where the run's dataset keeps the test images its cached detections name (None: not here)."""
        from afford.hoi.hicodet import split_image_dir

        return split_image_dir(self.run.config.data.root)

    def predictor(self) -> Any:
        if self._predictor is None:
            from afford.hoi.predictor import HOIPredictor

            self._predictor = HOIPredictor(self.run, device=_device(self.run), detections=self.detections)
        return self._predictor


@dataclass
class Registry:
    """Everything the app can run, what failed to load, example images and objects' affordances."""

    affordance: dict[str, AffordanceModel] = field(default_factory=dict)
    hoi: dict[str, HOIModel] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # run path -> one-line reason
    examples: list[Path] = field(default_factory=list)
    hoi_examples: list[Path] = field(default_factory=list)
    object_affordances: dict[str, tuple[str, ...]] = field(default_factory=dict)
    datasets: set[tuple[str, str | None]] = field(default_factory=set)  # (root, split) already read
    #: predictors hold the current image: one request at a time uses them
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: where answers write their downloads: one folder per request, the oldest removed past KEEP_ANSWERS
    answers_root: Path | None = None
    _answers: list[Path] = field(default_factory=list, repr=False)  # the kept answer folders, oldest first

    def answer_dir(self) -> Path:
        """A new folder for one request's files; keeps the last :data:`KEEP_ANSWERS` requests' only.

        The folder of all of them is removed with the registry or at exit (``afford app`` turns
        SIGTERM into a normal exit for this), so a stopped server leaves nothing in the temp dir.
        """
        with self.lock:
            return self.new_answer_dir()

    def new_answer_dir(self) -> Path:
        """:meth:`answer_dir` for a caller that holds :attr:`lock` and writes its files before it
        lets go: a folder is never removed while its answer is being written (concurrent callers
        each hold the lock in turn), and the oldest go by creation order, not modification time."""
        import shutil
        import tempfile
        import weakref

        if self.answers_root is None:
            self.answers_root = Path(tempfile.mkdtemp(prefix="afford_app_"))
            weakref.finalize(self, shutil.rmtree, self.answers_root, True)
        self._answers.append(Path(tempfile.mkdtemp(dir=self.answers_root)))
        while len(self._answers) > KEEP_ANSWERS:
            shutil.rmtree(self._answers.pop(0), ignore_errors=True)
        return self._answers[-1]


def demo_runs(demo_out: str | Path) -> list[Path]:
    """The run directories ``afford demo`` left in ``demo_out/runs`` (sorted by name)."""
    runs = Path(demo_out) / "runs"
    return sorted(p for p in runs.iterdir() if (p / "run.json").is_file()) if runs.is_dir() else []


def load_registry(paths: Sequence[str | Path], detections: str | Path | None = None, device: str = "cpu") -> Registry:
    """Load every run of ``paths`` onto ``device`` into a :class:`Registry`; never raises for a bad run."""
    from afford.checkpoint import load_run

    reg = Registry()
    for path in paths:
        try:
            run = load_run(path, device=device)
            if run.labels.task == "hoi":
                _add_hoi(reg, run, detections)
            else:
                _add_affordance(reg, run)
        except AffordError as e:
            reg.failed[str(path)] = str(e)
        except Exception as e:  # a corrupt file deep inside torch/safetensors: still one line
            log.exception("run %s did not load", path)
            reg.failed[str(path)] = f"{path}: did not load ({type(e).__name__}: {e})"
    return reg


def _unique(reg: Registry, name: str) -> str:
    taken = set(reg.affordance) | set(reg.hoi)
    if name not in taken:
        return name
    i = 2
    while f"{name} ({i})" in taken:
        i += 1
    return f"{name} ({i})"


def _add_affordance(reg: Registry, run: Any) -> None:
    from afford.engine.refinement import REFINER_DIR
    from afford.methods.base import Grounder

    method = run.method
    if not isinstance(method, Grounder):
        raise AffordError(f"{run.path}: a {run.info['method']} run is a training stage that makes no maps "
                          "(e.g. LoopTrans's cluster module); not served")
    base = _unique(reg, run.path.name)
    default = method.resolve_output(None)
    _add_examples(reg, run)
    models = [AffordanceModel(base, run, default)]
    models += [AffordanceModel(f"{base} · {o}", run, o) for o in method.outputs if o != default]
    if (run.path / REFINER_DIR).is_dir():
        refined = AffordanceModel(f"{base} + AffinityNet", run, default, "affinity")
        try:
            refined.predictor()  # an interrupted 'afford refine train' leaves a head that does not load
            models.append(refined)
        except AffordError as e:
            reg.failed[f"{run.path} + AffinityNet"] = str(e)
    reg.affordance.update({m.name: m for m in models})  # registered last: a run is served or failed, not both


def _add_examples(reg: Registry, run: Any) -> None:
    """Test images of the run's dataset (one per affordance first), and each object's affordances."""
    from afford.data.agd20k import open_split

    cfg = run.config.data
    where = (str(run.info.get("data_root") or cfg.root), run.info.get("split") or cfg.split)
    if where in reg.datasets:
        return
    reg.datasets.add(where)
    try:
        items = open_split(*where).test_items()
    except (AffordError, OSError):  # the dataset is not on this machine: the run still serves uploads
        return
    affs: dict[str, set[str]] = {}
    for it in items:
        affs.setdefault(it.object, set()).add(it.affordance)
    for obj, a in affs.items():
        reg.object_affordances.setdefault(obj, tuple(sorted(a)))
    seen = {p.parent.parent.name for p in reg.examples}
    for it in items:
        if len(reg.examples) >= MAX_EXAMPLES:
            break
        if it.affordance not in seen and it.image not in reg.examples:
            seen.add(it.affordance)
            reg.examples.append(it.image)


def _add_hoi(reg: Registry, run: Any, detections: str | Path | None) -> None:
    cfg = run.config
    dets = None
    if cfg.model.detector == "cached":
        dets = Path(detections or cfg.model.detections_test or "")
        if not dets.is_file():
            raise AffordError(f"{run.path}: this run reads cached detections and its test detections file "
                              f"{str(dets)!r} is not here; pass one with --detections FILE")
    examples = []
    model = HOIModel(_unique(reg, run.path.name), run, dets)
    if dets is not None:  # a cached-detector run answers only for images its file covers: offer those
        from afford.hoi.detections import read_image_mapping

        covered = read_image_mapping(dets, [], "cached detection", subset=True)  # checked before serving
        image_dir = model.test_image_dir
        examples = [image_dir / f for f in list(covered)[:MAX_EXAMPLES] if image_dir and (image_dir / f).is_file()]
    reg.hoi[model.name] = model
    reg.hoi_examples += [p for p in examples if p not in reg.hoi_examples]
