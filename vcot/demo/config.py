"""Configuration of ``vcot-demo``: which model to serve and where."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vcot.config import option
from vcot.grounding.model_format import Coords
from vcot.models.served import STRUCTURED_BOXES_HELP


@dataclass
class DemoConfig:
    """Serve a grounded model on a web page: upload an image, ask, watch its boxes appear as it reasons."""

    model: str | None = option(None, help="The base model: a local folder, an s3:// prefix or a hub id (or --server).")
    adapter: str | None = option(
        None, help="A PEFT adapter from train (folder or s3:// prefix, with its vcot-model.json)."
    )
    coords: Coords | None = option(
        None,
        help="Frame of the model's boxes when no adapter card records it: norm1000 or qwen2.5-absolute "
        "(never guessed).",
    )
    server: str | None = option(
        None, help="An OpenAI-compatible endpoint serving the model (vLLM: http://HOST:8000/v1) instead of --model."
    )
    served_model: str | None = option(None, help="With --server: the model name to ask (default: the one it lists).")
    model_card: str | None = option(
        None, help="With --server: the served model's vcot-model.json or its folder (the export): its prompt and frame."
    )
    server_params: dict[str, Any] = option(
        {}, help='With --server: more request parameters, a JSON object (vLLM: {"skip_special_tokens": false}).'
    )
    structured_boxes: bool = option(False, help="With --server: " + STRUCTURED_BOXES_HELP)
    host: str = option("127.0.0.1", help="Address to serve on (0.0.0.0 in a container behind a Service).")
    port: int = option(7860, help="Port to serve on.")
    max_new_tokens: int = option(256, help="The page's default for the most tokens generated per answer.")
    threads: int = option(0, help="On CPU: torch threads (0: torch's default, the node's cores).")
    max_question_chars: int = option(
        2000, help="The longest question taken, in characters (the page says so; one model serves visitors in turn)."
    )
    max_question_tokens: int = option(512, help="The longest question taken, in the model's tokens.")
    max_files_mb: int = option(
        1024, help="Disk for the page's files (uploads, shown images); the oldest go first (a pod's /tmp is 4 GiB)."
    )
    files_minutes: int = option(30, help="Minutes the page's files are kept at most (gradio's delete_cache).")

    def __post_init__(self) -> None:
        if bool(self.model) == bool(self.server):
            raise ValueError("pass --model (the model, loaded here) or --server (a model an endpoint serves), not both")
        in_process = [flag for flag, value in (("--adapter", self.adapter), ("--coords", self.coords)) if value]
        if self.server and in_process:
            raise ValueError(f"{', '.join(in_process)}: only with --model; with --server the card says (--model-card)")
        served_only = [flag for flag, value in (("--served-model", self.served_model), ("--model-card",
                       self.model_card), ("--server-params", self.server_params),
                       ("--structured-boxes", self.structured_boxes)) if value]  # fmt: skip
        if served_only and not self.server:
            raise ValueError(f"{', '.join(served_only)}: only with --server")
        if self.server and not self.model_card:
            raise ValueError("--server needs --model-card: the served model's vcot-model.json (its box frame)")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port {self.port} is not a TCP port: use 1-65535")
        if self.max_new_tokens < 1:
            raise ValueError("--max-new-tokens must be at least 1")
        if self.threads < 0:
            raise ValueError("--threads must be 0 (torch's default) or more")
        for name in ("max_question_chars", "max_question_tokens", "max_files_mb", "files_minutes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
