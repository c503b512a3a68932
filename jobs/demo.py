"""``vcot-demo``: serve a grounded model on a web page; its boxes appear on the image as it writes them. The model is
loaded here (``--model``, ``--adapter``) or asked where a server serves it (``--server URL --model-card EXPORT``).

Exit codes (one line on stderr): 2 invalid flags, gradio not installed (the demo extra) or a wrong choice of model
(an adapter from another base model or with a corrupt weights file, a frame to give with --coords, a --host not of
this machine), 1 another problem to fix before serving (the port in use, a model that cannot be loaded).
"""

from __future__ import annotations

from vcot.cli import run_stage
from vcot.demo.config import DemoConfig
from vcot.errors import require


def serve(config: DemoConfig) -> None:
    """The demo, imported once the flags are parsed: gradio, torch and transformers stay out of ``--help``."""
    require("gradio", "train,demo")
    from vcot.demo.app import serve as run

    run(config)


def main(argv: list[str] | None = None) -> int:
    return run_stage("demo", DemoConfig, serve, argv)


if __name__ == "__main__":
    raise SystemExit(main())
