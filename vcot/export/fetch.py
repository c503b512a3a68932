"""Fetch a committed export from storage into a local folder: what a serving pod does before its server starts.

An inference server (vLLM, SGLang, TGI) reads a model from a local folder or the hub, not from ``s3://``: the init
container of ``k8s/components/vllm`` runs ``python -m vcot.export.fetch SOURCE DEST`` into a volume the server then
serves. A committed export (its ``_SUCCESS`` written last by ``vcot-export``), a committed train run's own model
folder (``model/`` of a full fine-tune, ``merged/`` of ``merge_adapter: true``) or a plain model folder (a hub model
copied to storage, served as a teacher) is fetched; another stage's output or an export that never committed is
refused (exit 2) instead of served. Files already in DEST unchanged are kept; files the source does not hold are
removed, so a model fetched over another is never served with the other's leftover shards.
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
        return None if run_model_folder(source) else (
            f"{source} is an export that was never committed (no _SUCCESS): run vcot-export again")  # fmt: skip
    if not storage.exists(storage.join(source, "config.json")):
        return f"{source} holds no model (no config.json): give an export or a model folder"
    return None


def run_model_folder(source: str) -> bool:
    """Whether ``source`` is a model folder a committed train run lists as its own (``RUN/model``, ``RUN/merged``):
    the run's ``_SUCCESS`` commits it, as an export's commits the export."""
    run, name = storage.parent(source), source.rstrip("/").rsplit("/", 1)[-1]
    if manifest.committed_stage(run) != "train":
        return False
    return any(entry["path"].startswith(f"{name}/") for entry in manifest.read_manifest(run)["files"])


def fetch_export(source: str, dest: Path) -> Path:
    """Copy the export (or model folder) at ``source`` into ``dest``, leaving nothing else there; returns ``dest``."""
    problem = servable_problem(source)
    if problem:
        raise ConfigError(problem)
    storage.download_prefix(source, dest)
    held = _held(source)
    for stale in [path for path in dest.rglob("*") if path.is_file() and path.relative_to(dest).as_posix() not in held]:
        stale.unlink()  # an earlier model's shard index would make the server load the earlier shards
        log.info("stale_file_removed", path=str(stale))
    log.info("fetched", source=source, dest=str(dest), export=manifest.committed_stage(source) == "export")
    return dest


def _held(source: str) -> set[str]:
    """The relative paths of the files at ``source``, as :func:`storage.download_prefix` copies them (a local folder
    whole, hidden files too)."""
    if storage.is_s3(source):
        return {storage.relative(uri, source) for uri in storage.list_uris(source)}
    root = storage.local_path(source)
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


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
