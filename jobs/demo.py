"""``vcot-demo``: serve a grounded model on a web page; its boxes appear on the image as it writes them.

Exit codes (one line on stderr): 2 invalid flags or a wrong choice of model (an adapter from another base model or
with a corrupt weights file, a frame to give with --coords, a --host not of this machine), 1 another problem to fix
before serving (the port in use, a model that cannot be loaded).
"""

from __future__ import annotations

import sys

from vcot.cli import run_stage
from vcot.demo.config import DemoConfig


def main(argv: list[str] | None = None) -> int:
    try:
        from vcot.demo.app import serve
    except ModuleNotFoundError as exc:
        if exc.name != "gradio":
            raise
        print("vcot-demo: error: gradio is not installed: pip install 'vcot[demo]'", file=sys.stderr)
        return 1
    return run_stage("demo", DemoConfig, serve, argv)


if __name__ == "__main__":
    raise SystemExit(main())
