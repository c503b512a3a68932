"""Fetch a committed export from storage into a local folder: what a serving pod does before its server starts.

An inference server (vLLM, SGLang, TGI) reads a model from a local folder or the hub, not from ``s3://``: the init
container of ``k8s/components/vllm`` runs ``python -m vcot.export.fetch SOURCE DEST`` into a volume the server then
serves. A committed export (its ``_SUCCESS`` written last by ``vcot-export``) or a plain model folder (a hub model
copied to storage, served as a teacher) is fetched; another stage's output or an export that never committed is
refused (exit 2) instead of served. Files already in DEST unchanged are kept.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vcot.errors import ConfigError
from vcot.io import manifest, storage
from vcot.io.layout import MODEL_CARD
from vcot.log import configure_logging, get_logger

log = get_logger("vcot.export.fetch")


def servable_problem(source: str) -> str | None:
    """Why ``source`` must not be served, or ``None``: a committed export, or a plain model folder (a hub model
    copied to storage, e.g. a teacher for distill) are servable; another stage's output, an export that never
    committed (vcot-export stopped half way) and an empty prefix are not."""
    stage = manifest.committed_stage(source)
    if stage is not None:
        return None if stage == "export" else f"{source} is a {stage} output: serve the output of vcot-export"
    if storage.exists(storage.join(source, "adapter_config.json")):
        return f"{source} is an adapter: merge it into a model folder with vcot-export, then serve that"
    if storage.exists(storage.join(source, MODEL_CARD)):
        return f"{source} is an export that was never committed (no _SUCCESS): run vcot-export again"
    if not storage.exists(storage.join(source, "config.json")):
        return f"{source} holds no model (no config.json): give an export or a model folder"
    return None


def fetch_export(source: str, dest: Path) -> Path:
    """Copy the export (or model folder) at ``source`` into ``dest``; returns ``dest``."""
    problem = servable_problem(source)
    if problem:
        raise ConfigError(problem)
    storage.download_prefix(source, dest)
    log.info("fetched", source=source, dest=str(dest), export=manifest.committed_stage(source) == "export")
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="python -m vcot.export.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="the export (s3:// prefix or folder), e.g. s3://vcot/models/r1")
    parser.add_argument("dest", type=Path, help="the local folder the server serves, e.g. /models/served")
    args = parser.parse_args(argv)
    try:
        fetch_export(storage.check_uri(args.source), args.dest)
    except ConfigError as exc:
        print(f"vcot-fetch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
