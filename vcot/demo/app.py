"""The demo's page and server: upload an image, ask, and watch the boxes appear as the model writes them.

Every chunk of the streamed answer goes through :class:`~vcot.grounding.streaming.GroundedStream`; each mention it
completes is drawn at once (a mention still being written is not), and the text shows each mention in its
box's colour. Whatever goes wrong with an upload or a generation is one readable line on the page; the
server keeps serving. Gradio is told not to phone home (no telemetry, no version check, no web fonts).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from PIL import Image

from vcot.grounding.answers import final_answer
from vcot.demo.config import DemoConfig
from vcot.demo.drawing import display_copy, draw_boxes, highlighted
from vcot.demo.engine import DemoModel, Options, load_demo_model
from vcot.demo.examples import write_examples
from vcot.errors import VcotError
from vcot.log import get_logger
from vcot.grounding.streaming import GroundedStream

log = get_logger(__name__)

# System fonts only: the default theme would have the browser fetch web fonts from the internet.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
)
MAX_UPLOAD = "64mb"


def problem(message: object) -> str:
    """One readable line for the page's status."""
    return f"⚠️ {message}"


def show_upload(engine: DemoModel, path: str | None) -> tuple[Image.Image | None, str]:
    """An upload is shown at once, with how the model will see it, or why it cannot be used."""
    if not path:
        return None, ""
    try:
        prepared = engine.prepare(path)
    except VcotError as exc:
        return None, problem(exc)
    return display_copy(prepared.image), prepared.note


def rationale(stream: GroundedStream) -> Any:
    segments, colours = highlighted(stream.text, stream.boxes, stream.invalid)
    return gr.HighlightedText(value=segments, color_map=colours)


def summary(stream: GroundedStream, seconds: float) -> str:
    drawn = len(stream.boxes)
    line = f"Done in {seconds:.1f} s: {drawn} box{'es' if drawn != 1 else ''} drawn"
    if stream.invalid:
        reasons = ", ".join(sorted({bad.reason for bad in stream.invalid}))
        line += f", {len(stream.invalid)} written but unreadable ({reasons})"
    return line + "."


def answer(engine: DemoModel, path: str | None, question: str, *settings: Any) -> Iterator[tuple[Any, ...]]:
    """Outputs (image, reasoning, answer, status) as the answer streams in: a redrawn image only when a box is new."""
    try:
        prepared = engine.prepare(path)
        if not (question or "").strip():
            raise VcotError("no question: type one, e.g. 'What color is the circle?'")
        options = Options(*settings)
    except VcotError as exc:
        yield gr.skip(), gr.skip(), gr.skip(), problem(exc)
        return
    shown = display_copy(prepared.image)
    stream = GroundedStream(engine.fmt, width=prepared.image.width, height=prepared.image.height)
    yield shown, rationale(stream), "", f"{prepared.note} Generating…"
    started = time.perf_counter()
    try:
        for chunk in engine.stream(prepared, question.strip(), options):
            new = stream.feed(chunk)
            yield (draw_boxes(shown, stream.boxes) if new else gr.skip()), rationale(stream), gr.skip(), gr.skip()
        stream.finish()
    except Exception as exc:  # noqa: BLE001 - a failed generation is reported on the page; the server keeps serving
        log.exception("generation_failed")
        yield gr.skip(), rationale(stream), gr.skip(), problem(
            f"generation failed ({type(exc).__name__}: {exc}); the server is still up: try again, "
            "with fewer new tokens or a smaller image if memory ran out"
        )
        return
    final = final_answer(stream.text)
    shown_answer = final if final is not None else "(no 'Answer:' line in the response)"
    done = summary(stream, time.perf_counter() - started)
    yield draw_boxes(shown, stream.boxes), rationale(stream), shown_answer, done


def build_app(engine: DemoModel, examples: list[tuple[str, str]], max_new_tokens: int = 256) -> gr.Blocks:
    """The page: the inputs and generation settings on the left; the image, its boxes and the text on the right."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by every Blocks (gr.Examples builds its own) and at launch
    defaults = Options(max_new_tokens=max_new_tokens)
    with gr.Blocks(title="vcot: grounded reasoning, live", analytics_enabled=False) as app:
        gr.Markdown("## Grounded reasoning, live\n" + engine.describe())
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="upload")
                question = gr.Textbox(label="Question", placeholder="What color is the circle?", elem_id="question")
                run = gr.Button("Run", variant="primary", elem_id="run")
                with gr.Accordion("Generation settings", open=False):
                    settings = [
                        gr.Slider(1, 2048, value=defaults.max_new_tokens, step=1, label="Max new tokens"),
                        gr.Slider(1.0, 2.0, value=defaults.repetition_penalty, step=0.05,
                                  label="Repetition penalty (1 = off)"),
                        gr.Checkbox(value=defaults.box_aware_penalty,
                                    label="Box-aware: spare coordinates inside an open box"),
                        gr.Checkbox(value=defaults.sample, label="Sample (greedy when off)"),
                        gr.Slider(0.05, 2.0, value=defaults.temperature, step=0.05, label="Temperature (sampling)"),
                        gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label="Top-p (sampling)"),
                    ]
                gr.Examples(examples=[list(pair) for pair in examples], inputs=[upload, question])
            with gr.Column():
                picture = gr.Image(label="Boxes, as the model writes them", type="pil", format="png",
                                   interactive=False, elem_id="picture")
                status = gr.Markdown(elem_id="status")
                reasoning = gr.HighlightedText(label="Reasoning (streamed)", combine_adjacent=False,
                                               elem_id="reasoning")
                final = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
        upload.change(lambda path: show_upload(engine, path), inputs=upload, outputs=[picture, status])
        inputs = [upload, question, *settings]
        outputs = [picture, reasoning, final, status]

        def respond(path: str | None, text: str, *values: Any) -> Iterator[tuple[Any, ...]]:
            yield from answer(engine, path, text, *values)

        # One queue for both triggers: one model answers one request at a time.
        run.click(respond, inputs=inputs, outputs=outputs, concurrency_id="model", concurrency_limit=1)
        question.submit(respond, inputs=inputs, outputs=outputs, concurrency_id="model", concurrency_limit=1)
    return app


def serve(config: DemoConfig) -> None:
    """Load the model, then serve the page until interrupted."""
    if config.threads:
        torch.set_num_threads(config.threads)  # torch defaults to the node's cores, not the pod's CPU limit
    engine = load_demo_model(config.model, config.adapter, config.coords)
    with tempfile.TemporaryDirectory(prefix="vcot-demo-examples-") as folder:
        app = build_app(engine, write_examples(Path(folder)), config.max_new_tokens)
        log.info("serving", url=f"http://{config.host}:{config.port}")
        app.queue(default_concurrency_limit=1).launch(
            server_name=config.host,
            server_port=config.port,
            theme=THEME,
            show_error=False,
            max_file_size=MAX_UPLOAD,
            allowed_paths=[folder],
            footer_links=[],
            quiet=True,
        )
