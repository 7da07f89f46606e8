"""The Gradio page: three tabs over :mod:`afford.app.answers` (Gradio is imported here only).

Every handler turns an :class:`AffordError` into a message in the page (``#…-status``) and any
other exception into a one-line "internal error" there, with the traceback in the server log,
so a bad upload never shows a stack trace and the server keeps serving.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from afford.app.answers import ALL, affordance_answer, compare_answer, hoi_answer, open_image
from afford.app.registry import Registry
from afford.errors import AffordError, first_line

log = logging.getLogger(__name__)

#: uploads larger than this are refused by the server before any handler runs
MAX_FILE_SIZE = "50mb"
#: small images (SynthAGD's are 224 px) are drawn at the size of their box, not at their own
CSS = "#aff-result img, #cmp-result img, #hoi-result img { width: 100%; height: 100%; object-fit: contain; }"
HOI_COLUMNS = ["verb", "object", "score", "human box (x1, y1, x2, y2)", "object box"]


def _gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home (and none possible offline)
    try:
        import gradio as gr
    except ImportError:
        raise AffordError("afford app needs Gradio: pip install -e '.[app]' (or '.[dev]')") from None
    return gr


def _in_page(n_outputs: int) -> Callable:
    """Run a handler; on failure, empty its outputs and put a readable message in the status (last)."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def handler(*args: Any) -> tuple:
            try:
                return (*fn(*args), "")
            except AffordError as e:
                message = str(e)
            except Exception as e:  # a bug, not the user's input: say so, keep serving
                log.exception("afford app: %s failed", fn.__name__)
                message = f"internal error ({type(e).__name__}); the server log has the details"
            return (*([None] * n_outputs), f"**Error:** {message}")

        return handler

    return wrap


def _without_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last part (``/srv/data/dets.json`` -> ``dets.json``)."""
    import re

    return re.sub(r"(?<![\w.])/(?:[^\s'\"/]+/)+([^\s'\"/]+)", r"\1", text)


def _load_message(reg: Registry) -> str:
    lines = []
    if reg.failed:
        lines.append("**Runs not served** (the others are):")
        # names, not the server's paths: the page may be served to other machines (--host 0.0.0.0)
        lines += [f"- `{Path(path).name}`: {_without_paths(why)}" for path, why in reg.failed.items()]
    if not reg.affordance and not reg.hoi:
        lines.append("**No model loaded.** Start the app with `afford app --run RUN_DIR ...`, or run "
                     "`afford demo` first so that `demo_out/runs` holds trained runs.")
    return "\n".join(lines)


def _examples(gr: Any, reg: Registry, upload: Any) -> None:
    """The dataset's example images for ``upload``, labelled ``affordance · object`` (AGD20K layout
    ``.../<affordance>/<object>/<image>``)."""
    if reg.examples:
        gr.Examples([[str(p)] for p in reg.examples], inputs=[upload], label="Examples",
                    example_labels=[f"{p.parent.parent.name} · {p.parent.name}" for p in reg.examples])


def build_app(reg: Registry) -> Any:
    """The ``gr.Blocks`` page for the models of ``reg``."""
    gr = _gradio()

    def classes_of(name: str | None) -> list[str]:
        return list(reg.affordance[name].classes) if name in reg.affordance else []

    @_in_page(3)
    def show_upload(path: str | None) -> tuple:  # a new image clears the previous answer
        return (open_image(path) if path else None, None, None)

    @_in_page(2)
    def ground(path: str | None, model: str, affordance: str) -> tuple:
        a = affordance_answer(reg, path, model, affordance)
        return a.picture, [str(p) for p in a.downloads]

    @_in_page(2)
    def compare(path: str | None, models: list[str], affordance: str, others: list[str]) -> tuple:
        return compare_answer(reg, path, models or [], affordance, others or [])

    @_in_page(2)
    def detect(path: str | None, model: str, top: float) -> tuple:
        picture, rows = hoi_answer(reg, path, model, int(top))
        return picture, rows

    def new_classes(name: str) -> Any:
        cls = classes_of(name)
        return gr.Dropdown(choices=[ALL, *cls], value=cls[0] if cls else ALL)

    def shared_classes(names: list[str] | None) -> list[str]:
        """The classes every chosen model has, in the first one's order."""
        chosen = [reg.affordance[n].classes for n in names or [] if n in reg.affordance]
        return [c for c in chosen[0] if all(c in other for other in chosen[1:])] if chosen else []

    def object_others(obj: str | None, affordance: str, names: list[str]) -> Any:
        allowed = shared_classes(names)
        return gr.Dropdown(value=[a for a in reg.object_affordances.get(obj or "", ()) if a != affordance and a in allowed])

    def new_models(names: list[str], affordance: str | None, others: list[str] | None) -> tuple[Any, Any]:
        """The affordance lists offer the classes every chosen model has; choices still valid stay."""
        cls = shared_classes(names)
        keep = affordance if affordance in cls else (cls[0] if cls else None)
        return gr.Dropdown(choices=cls, value=keep), gr.Dropdown(choices=cls, value=[o for o in others or [] if o in cls])

    models = list(reg.affordance)
    first = models[0] if models else None
    defaults = [m for m in models if " · " not in m and "+" not in m]
    defaults = [m for m in defaults if reg.affordance[m].classes == reg.affordance[defaults[0]].classes][:4]
    # Gradio's own copies of uploads and answers are removed after 15 min (checked every 5 min)
    with gr.Blocks(title="afford", analytics_enabled=False, delete_cache=(300, 900)) as app:
        gr.Markdown("# afford\nWeakly supervised affordance grounding and HOI detection: upload a photo (or "
                    "pick an example), choose a model and an affordance or an interaction.")
        gr.Markdown(_load_message(reg), elem_id="load-status")
        with gr.Tab("Affordance", id="affordance"):
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(label="Image", type="filepath", elem_id="aff-upload")
                    preview = gr.Image(label="Input", format="png", interactive=False, height=220)
                    model = gr.Dropdown(models, value=first, label="Model (run)", elem_id="aff-model")
                    affordance = gr.Dropdown([ALL, *classes_of(first)], value=(classes_of(first) or [ALL])[0],
                                             label="Affordance", elem_id="aff-affordance")
                    run = gr.Button("Ground", variant="primary", elem_id="aff-run")
                    _examples(gr, reg, upload)
                with gr.Column(scale=2):
                    aff_status = gr.Markdown(elem_id="aff-status")
                    result = gr.Image(label="Heatmap", format="png", interactive=False, height=480,
                                      elem_id="aff-result")
                    files = gr.File(label="Download (.npy, .png, overlay)", file_count="multiple",
                                    interactive=False, elem_id="aff-files")
            upload.change(show_upload, upload, [preview, result, files, aff_status])
            model.change(new_classes, model, affordance)
            run.click(ground, [upload, model, affordance], [result, files, aff_status])

        with gr.Tab("Compare", id="compare"):
            with gr.Row():
                with gr.Column(scale=1):
                    c_upload = gr.File(label="Image", type="filepath", elem_id="cmp-upload")
                    c_models = gr.CheckboxGroup(models, value=defaults, label="Models", elem_id="cmp-models")
                    c_aff = gr.Dropdown(classes_of(first), value=(classes_of(first) or [None])[0],
                                        label="Affordance", elem_id="cmp-affordance")
                    c_obj = gr.Dropdown(sorted(reg.object_affordances), value=None, label="Object (fills its "
                                        "other affordances)", elem_id="cmp-object")
                    c_others = gr.Dropdown(classes_of(first), value=[], multiselect=True,
                                           label="Other affordances of the object", elem_id="cmp-others")
                    c_run = gr.Button("Compare", variant="primary", elem_id="cmp-run")
                    _examples(gr, reg, c_upload)
                with gr.Column(scale=2):
                    c_status = gr.Markdown(elem_id="cmp-status")
                    c_grid = gr.Image(label="One line per model: the chosen affordance, then the others",
                                      format="png", interactive=False, height=560, elem_id="cmp-result")
                    c_table = gr.Markdown(elem_id="cmp-table")
            c_models.change(new_models, [c_models, c_aff, c_others], [c_aff, c_others])
            c_obj.change(object_others, [c_obj, c_aff, c_models], c_others)
            c_run.click(compare, [c_upload, c_models, c_aff, c_others], [c_grid, c_table, c_status])

        if reg.hoi:
            with gr.Tab("HOI", id="hoi"):
                with gr.Row():
                    with gr.Column(scale=1):
                        h_upload = gr.File(label="Image", type="filepath", elem_id="hoi-upload")
                        h_model = gr.Dropdown(list(reg.hoi), value=next(iter(reg.hoi)), label="Model (run)",
                                              elem_id="hoi-model")
                        h_top = gr.Slider(1, 20, value=5, step=1, label="Triplets to show", elem_id="hoi-top")
                        h_run = gr.Button("Detect", variant="primary", elem_id="hoi-run")
                        if reg.hoi_examples:
                            gr.Examples([[str(p)] for p in reg.hoi_examples], inputs=[h_upload], label="Examples")
                    with gr.Column(scale=2):
                        h_status = gr.Markdown(elem_id="hoi-status")
                        h_image = gr.Image(label="Interactions", format="png", interactive=False, height=480,
                                           elem_id="hoi-result")
                        h_rows = gr.Dataframe(headers=HOI_COLUMNS, interactive=False, elem_id="hoi-rows")
                h_run.click(detect, [h_upload, h_model, h_top], [h_image, h_rows, h_status])
    return app


def allowed_paths(reg: Registry) -> list[str]:
    """The files the page may serve besides its answers: the example images themselves (not their
    folders, which may hold other files)."""
    return sorted({str(p) for p in [*reg.examples, *reg.hoi_examples]})


def serve(reg: Registry, host: str = "127.0.0.1", port: int = 7860) -> Any:
    """Start the page on ``host:port`` and return the running ``gr.Blocks`` (``.block_thread()``
    waits until Ctrl-C or SIGTERM, then closes the server and gradio's temporary files).
    A port in use is an AffordError naming it, not gradio's traceback."""
    app = build_app(reg)
    app.queue(default_concurrency_limit=1, max_size=32)  # a request past 32 waiting ones is refused
    try:
        app.launch(server_name=host, server_port=port, max_file_size=MAX_FILE_SIZE, show_error=False,
                   allowed_paths=allowed_paths(reg), ssr_mode=False, css=CSS, prevent_thread_lock=True, quiet=False)
    except OSError as e:
        raise AffordError(f"--port {port}: cannot serve on {host}:{port} ({first_line(e)}); another server may "
                          "be using it: pass another --port") from None
    return app
