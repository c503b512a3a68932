"""The demo's page and server: upload an image, ask, and watch the boxes appear as the model writes them.

Every chunk of the streamed answer goes through :class:`~vcot.grounding.streaming.GroundedStream`; each mention it
completes is drawn at once (a mention still being written is not), and the text shows each mention in its
box's colour. Whatever goes wrong with an upload or a generation is one readable line on the page; the
server keeps serving. Gradio is told not to phone home (no telemetry, no version check, no web fonts).

One model serves every visitor in turn, so the page bounds what one visitor can hold: the question (characters and
tokens), the generation of a visitor who left (stopped at its next layer, :mod:`vcot.demo.sessions`), and the files
on disk (a folder of its own, each visitor's newest upload only, a size budget and an age).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from PIL import Image

from vcot.demo.config import DemoConfig
from vcot.demo.drawing import display_copy, draw_boxes, highlighted
from vcot.demo.engine import DemoModel, Options, QuestionLimits, load_demo_model
from vcot.demo.examples import write_examples
from vcot.demo.served import ServedModel, connect_served
from vcot.demo.sessions import Sessions
from vcot.errors import ConfigError, VcotError
from vcot.grounding.answers import final_answer
from vcot.grounding.streaming import GroundedStream
from vcot.log import get_logger

log = get_logger(__name__)

# System fonts only: the default theme would have the browser fetch web fonts from the internet.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
)
MAX_UPLOAD = "64mb"
Engine = DemoModel | ServedModel
"""What answers: the model loaded here, or one a server serves (``--server``)."""


def problem(message: object) -> str:
    """One readable line for the page's status."""
    return f"⚠️ {message}"


def show_upload(engine: Engine, path: str | None) -> tuple[Image.Image | None, str]:
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


def answer(
    engine: Engine, path: str | None, question: str, *settings: Any,
    limits: QuestionLimits = QuestionLimits(), cancel: threading.Event | None = None,
) -> Iterator[tuple[Any, ...]]:
    """Outputs (image, reasoning, answer, status) as the answer streams in: a redrawn image only when a box is new.

    The question is checked against ``limits`` before the image is even decoded; ``cancel`` (set when the visitor
    leaves) stops the generation."""
    try:
        question = engine.check_question(question, limits)
        prepared = engine.prepare(path)
        options = Options(*settings)
    except VcotError as exc:
        yield gr.skip(), gr.skip(), gr.skip(), problem(exc)
        return
    shown = display_copy(prepared.image)
    stream = GroundedStream(engine.fmt, width=prepared.image.width, height=prepared.image.height)
    yield shown, rationale(stream), "", f"{prepared.note} Generating…"
    started = time.perf_counter()
    try:
        for chunk in engine.stream(prepared, question, options, cancel):
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
    if cancel is not None and cancel.is_set():
        return  # the visitor left: nobody reads the rest
    final = final_answer(stream.text)
    shown_answer = final if final is not None else "(no 'Answer:' line in the response)"
    done = summary(stream, time.perf_counter() - started)
    yield draw_boxes(shown, stream.boxes), rationale(stream), shown_answer, done


def build_app(
    engine: Engine, examples: list[tuple[str, str]], max_new_tokens: int = 256, *,
    limits: QuestionLimits = QuestionLimits(), sessions: Sessions | None = None, files_minutes: int = 30,
) -> gr.Blocks:
    """The page: the inputs and generation settings on the left; the image, its boxes and the text on the right.

    ``sessions`` holds each visitor's cancel event and uploads; gradio deletes its files older than ``files_minutes``
    (``delete_cache``, checked every minute, and all of them when the server stops)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by every Blocks (gr.Examples builds its own) and at launch
    defaults = Options(max_new_tokens=max_new_tokens)
    sessions = sessions or Sessions()
    cache = (60, files_minutes * 60)
    with gr.Blocks(title="vcot: grounded reasoning, live", analytics_enabled=False, delete_cache=cache) as app:
        gr.Markdown("## Grounded reasoning, live\n" + engine.describe())
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="upload")
                question = gr.Textbox(label="Question", placeholder="What color is the circle?", elem_id="question",
                                      info=limits.describe(), max_length=limits.chars)
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
        def shown(path: str | None, request: gr.Request) -> tuple[Image.Image | None, str]:
            sessions.uploaded(request.session_hash or "", path)
            return show_upload(engine, path)

        upload.change(shown, inputs=upload, outputs=[picture, status])
        inputs = [upload, question, *settings]
        outputs = [picture, reasoning, final, status]

        def respond(  # noqa: PLR0913 - one parameter per input: gradio passes gr.Request by its annotation
            path: str | None, text: str, max_new: int, penalty: float, box_aware: bool, sample: bool,
            temperature: float, top_p: float, request: gr.Request,
        ) -> Iterator[tuple[Any, ...]]:
            session = request.session_hash or ""
            sessions.uploaded(session, path)
            values = (max_new, penalty, box_aware, sample, temperature, top_p)
            yield from answer(engine, path, text, *values, limits=limits, cancel=sessions.cancel_event(session))

        def left(request: gr.Request) -> None:
            sessions.left(request.session_hash or "")

        app.unload(left)  # the visitor closed or reloaded the page

        # One queue for both triggers: one model answers one request at a time.
        run.click(respond, inputs=inputs, outputs=outputs, concurrency_id="model", concurrency_limit=1)
        question.submit(respond, inputs=inputs, outputs=outputs, concurrency_id="model", concurrency_limit=1)
    return app


def check_address(host: str, port: int) -> None:
    """Refuse, before minutes of model loading, an address the server could not listen on: a port in use is a
    :class:`VcotError` (exit 1: free it, or another port), a host that is not this machine's a :class:`ConfigError`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(
            f"--host {host} is not an address ({exc.strerror}): use 127.0.0.1, or 0.0.0.0 for all"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a closed socket's TIME_WAIT is fine
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise VcotError(
                    f"port {port} on {host} is in use (another vcot-demo?): stop that process or pass --port"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(
                    f"--host {host} is not an address of this machine: use 127.0.0.1, or 0.0.0.0 for all"
                ) from None
            raise VcotError(f"cannot serve on {host}:{port} ({exc.strerror}): pass another --host or --port") from None


def files_folder() -> Path:
    """A fresh folder for gradio's files (uploads, the images the page shows), inside ``GRADIO_TEMP_DIR`` when set
    (else the system's temporary folder), which gradio then uses: this process alone writes there."""
    parent = os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()
    Path(parent).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="vcot-demo-files-", dir=parent))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)  # read when the page's components are built and at launch
    return folder


def serve(config: DemoConfig) -> None:
    """Check the address, load the model, then serve the page until interrupted; its files are deleted at exit."""
    check_address(config.host, config.port)
    if config.threads:
        torch.set_num_threads(config.threads)  # torch defaults to the node's cores, not the pod's CPU limit
    engine: Engine
    if config.server:
        engine = connect_served(config.server, config.model_card, served_model=config.served_model,
                                params=config.server_params, structured_boxes=config.structured_boxes)  # fmt: skip
    else:
        engine = load_demo_model(str(config.model), config.adapter, config.coords)
    limits = QuestionLimits(chars=config.max_question_chars, tokens=config.max_question_tokens)
    files = files_folder()
    try:
        with tempfile.TemporaryDirectory(prefix="vcot-demo-examples-") as folder:
            sessions = Sessions(files, max_bytes=config.max_files_mb * 2**20)
            app = build_app(engine, write_examples(Path(folder)), config.max_new_tokens, limits=limits,
                            sessions=sessions, files_minutes=config.files_minutes)
            log.info("serving", url=f"http://{config.host}:{config.port}", files=str(files))
            try:
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
            except OSError as exc:  # taken between the check and the launch
                if "Cannot find empty port" not in str(exc):
                    raise
                raise VcotError(
                    f"port {config.port} on {config.host} is in use: stop that process or pass --port"
                ) from None
    finally:
        shutil.rmtree(files, ignore_errors=True)
