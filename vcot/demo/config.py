"""Configuration of ``vcot-demo``: which model to serve and where."""

from __future__ import annotations

from dataclasses import dataclass

from vcot.config import option
from vcot.grounding.model_format import Coords


@dataclass
class DemoConfig:
    """Serve a grounded model on a web page: upload an image, ask, watch its boxes appear as it reasons."""

    model: str = option(help="The base model: a local folder, an s3:// prefix or a hub id.")
    adapter: str | None = option(
        None, help="A PEFT adapter from train (folder or s3:// prefix, with its vcot-model.json)."
    )
    coords: Coords | None = option(
        None,
        help="Frame of the model's boxes when no adapter card records it: norm1000 or qwen2.5-absolute "
        "(never guessed).",
    )
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
        if not 0 < self.port < 65536:
            raise ValueError(f"--port {self.port} is not a TCP port: use 1-65535")
        if self.max_new_tokens < 1:
            raise ValueError("--max-new-tokens must be at least 1")
        if self.threads < 0:
            raise ValueError("--threads must be 0 (torch's default) or more")
        for name in ("max_question_chars", "max_question_tokens", "max_files_mb", "files_minutes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
