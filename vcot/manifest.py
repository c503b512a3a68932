"""Commit stage outputs with a ``_SUCCESS`` manifest, written last.

S3 has no atomic rename, so an output is only *committed* once its manifest exists: data files first,
manifest last. Readers trust only committed outputs and only the files their manifest lists, so a
writer killed half-way leaves nothing anyone will read.

Sharded outputs (N pods writing disjoint parts) commit per shard under ``_shards/``; the pod that
sees all N shard manifests merges them into ``_SUCCESS``. Readers also accept a complete set of shard
manifests, so the next stage can tell when all N are done even if no merge happened yet.

The manifest is deterministic (no timestamps): the same inputs, config and code give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from vcot import __version__, storage
from vcot.errors import NotCommittedError
from vcot.shards import ShardFile, read_jsonl

SUCCESS = "_SUCCESS"
SHARDS_DIR = "_shards"
MANIFEST_VERSION = 1
JOB_INDEX_ENV = "JOB_COMPLETION_INDEX"
"""Set by Kubernetes in every pod of an Indexed Job: the default shard index of every sharded stage."""
NOT_CONFIG = ("overwrite", "workers")
"""Options that say how to run, not what is made: left out of the manifest so a rerun with them gives the same bytes."""
_SHARD_RE = re.compile(r"(\d{5})-of-(\d{5})\.json$")


@dataclass(frozen=True)
class ShardSpec:
    """Which part of the work this pod does: ``index`` in ``[0, count)``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                f"shard index {self.index} is not in [0, {self.count}): set --shard-index below --num-shards"
            )

    @property
    def name(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}"

    def owns(self, position: int) -> bool:
        """Round-robin ownership of the ``position``-th input item."""
        return position % self.count == self.index

    @classmethod
    def resolve(cls, index: int | None, count: int) -> ShardSpec:
        """This pod's shard: ``index``, else ``$JOB_COMPLETION_INDEX`` (a Kubernetes Indexed Job), else 0.

        Raises ``ValueError`` saying what to set when the index is not a valid one.

        >>> ShardSpec.resolve(2, 4).name
        '00002-of-00004'
        """
        if index is None:
            raw = os.environ.get(JOB_INDEX_ENV, "0").strip()
            if not raw.isdigit():
                raise ValueError(f"{JOB_INDEX_ENV}={raw!r} is not a shard index: set --shard-index")
            index = int(raw)
        return cls(index, count)


@lru_cache(maxsize=1)
def code_version() -> str:
    """``vcot <version>`` plus the git commit (``VCOT_GIT_SHA`` in images, else ``git rev-parse``)."""
    sha = os.environ.get("VCOT_GIT_SHA", "")
    if not sha:
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "--short=12", "HEAD"],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
    return f"vcot {__version__}" + (f" ({sha})" if sha else "")


def manifest_uri(output: str) -> str:
    return storage.join(output, SUCCESS)


def shard_manifest_uri(output: str, shard: ShardSpec) -> str:
    return storage.join(output, SHARDS_DIR, f"{shard.name}.json")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def lineage(input_uri: str) -> dict[str, Any]:
    """What a downstream manifest records of one input: where, what, and its own lineage.

    Raw source data (a dataset file, not a stage output) has no manifest: only its URI is recorded.
    """
    try:
        manifest = read_manifest(input_uri)
    except NotCommittedError:
        return {"uri": input_uri.rstrip("/"), "committed": False}
    return {
        "uri": input_uri.rstrip("/"),
        "manifest_sha256": _sha256(storage.dumps_json(manifest)),
        "stage": manifest.get("stage"),
        "code_version": manifest.get("code_version"),
        "inputs": manifest.get("inputs", []),
    }


def build_manifest(
    *,
    stage: str,
    files: Sequence[ShardFile],
    config: dict[str, Any],
    inputs: Sequence[str] = (),
    stats: dict[str, Any] | None = None,
    shard: ShardSpec | None = None,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "stage": stage,
        "code_version": code_version(),
        "config": {key: value for key, value in config.items() if key not in NOT_CONFIG},
        "inputs": [lineage(uri) for uri in inputs],
        "files": sorted((f.to_dict() for f in files), key=lambda f: f["path"]),
        "records": sum(f.records for f in files),
        "stats": stats or {},
    }
    if shard is not None:
        manifest["shard"] = {"index": shard.index, "count": shard.count}
    return manifest


def commit(
    output: str,
    *,
    stage: str,
    files: Sequence[ShardFile],
    config: dict[str, Any],
    inputs: Sequence[str] = (),
    stats: dict[str, Any] | None = None,
    shard: ShardSpec | None = None,
    finalize: Finalize | None = None,
) -> dict[str, Any]:
    """Write the manifest for ``output`` (call after every data file is closed). Returns it.

    With ``shard``, writes this shard's manifest and, if all shards are now done, the merged ``_SUCCESS``
    (see :func:`complete_shard_set` for ``finalize``).
    """
    manifest = build_manifest(stage=stage, files=files, config=config, inputs=inputs, stats=stats, shard=shard)
    if shard is None or shard.count == 1:
        manifest.pop("shard", None)
        storage.write_json(manifest_uri(output), manifest)
        return manifest
    storage.write_json(shard_manifest_uri(output, shard), manifest)
    complete_shard_set(output, finalize, count=shard.count)
    return manifest


Finalize = Callable[[list[dict[str, Any]]], Sequence[ShardFile]]
"""Writes files made from all shard manifests (a merged report) and returns their entries for ``_SUCCESS``."""


def complete_shard_set(
    output: str, finalize: Finalize | None = None, *, count: int | None = None
) -> dict[str, Any] | None:
    """If every shard is committed, write the merged ``_SUCCESS`` (and return it); else do nothing (``None``).

    ``finalize`` gets the shard manifests and writes what belongs to the whole output (convert's merged
    quality report) *before* ``_SUCCESS``, which lists those files too: a reader that sees ``_SUCCESS`` finds
    them. Whoever notices the complete set does this; every pod writes the same bytes, so a race is harmless.
    A pod that finds its shard already committed calls this again, so a set whose last pod died before
    writing ``_SUCCESS`` still gets it. A pod passes its own shard ``count``: only a complete set of *that*
    many shards is merged, never a leftover set of another run's count.
    """
    parts = _shard_manifests(output, count)
    if parts is None:
        return None
    merged = _merge(parts, list(finalize(parts)) if finalize else [])
    storage.write_json(manifest_uri(output), merged)
    return merged


def _shard_manifest_uris(output: str) -> dict[int, dict[int, str]]:
    """``{count: {index: uri}}`` of the shard manifests under ``output``."""
    by_count: dict[int, dict[int, str]] = {}
    for uri in storage.list_uris(storage.join(output, SHARDS_DIR), suffix=".json"):
        match = _SHARD_RE.search(uri)
        if match:
            by_count.setdefault(int(match.group(2)), {})[int(match.group(1))] = uri
    return by_count


def _shard_manifests(output: str, count: int | None = None) -> list[dict[str, Any]] | None:
    """All shard manifests of a complete set (of ``count`` shards, else the smallest complete count), else ``None``."""
    by_count = _shard_manifest_uris(output)
    counts = [count] if count is not None else sorted(by_count)
    for candidate in counts:
        found = by_count.get(candidate, {})
        if len(found) == candidate and set(found) == set(range(candidate)):
            return [storage.read_json(found[index]) for index in range(candidate)]
    return None


def merge_shard_manifests(output: str, count: int | None = None) -> dict[str, Any] | None:
    """The merged manifest of a complete shard set (deterministic), or ``None`` while shards are missing."""
    parts = _shard_manifests(output, count)
    return None if parts is None else _merge(parts, [])


def _merge(parts: list[dict[str, Any]], extra: Sequence[ShardFile]) -> dict[str, Any]:
    first = parts[0]
    files = sorted(
        [*(f for part in parts for f in part["files"]), *(f.to_dict() for f in extra)], key=lambda f: f["path"]
    )
    return {
        "manifest_version": MANIFEST_VERSION,
        "stage": first["stage"],
        "code_version": first["code_version"],
        "config": {k: v for k, v in first["config"].items() if k not in ("shard_index",)},
        "inputs": first["inputs"],
        "files": files,
        "records": sum(f["records"] for f in files),
        "stats": {"shards": [part.get("stats", {}) for part in parts]},
        "shard_count": len(parts),
    }


def is_committed(output: str, shard: ShardSpec | None = None) -> bool:
    """Whether ``output`` (or one shard of it) has been committed."""
    if shard is not None and shard.count > 1:
        return storage.exists(shard_manifest_uri(output, shard))
    return storage.exists(manifest_uri(output))


def read_manifest(output: str) -> dict[str, Any]:
    """The manifest of a committed output; refuses (clearly) an output that was never committed."""
    uri = manifest_uri(output)
    if storage.exists(uri):
        return storage.read_json(uri)
    merged = merge_shard_manifests(output)
    if merged is not None:
        return merged
    raise NotCommittedError(
        f"{output} has no {SUCCESS} manifest: the stage that writes it has not finished or failed. "
        "Run (or rerun) that stage first; partial outputs are never read"
    )


def committed_files(output: str, prefix: str = "") -> list[str]:
    """URIs of the files a committed output lists (optionally only those under ``prefix``, e.g. ``train/``)."""
    manifest = read_manifest(output)
    return [storage.join(output, f["path"]) for f in manifest["files"] if f["path"].startswith(prefix)]


def committed_records(output: str, prefixes: Sequence[str] = ("train/", "val/")) -> Iterator[dict[str, Any]]:
    """The records of a committed output's files under each of ``prefixes`` in turn, in manifest order.

    The manifest is read once, before the first record; positions in this stream are stable across runs,
    so round-robin sharding over it (``ShardSpec.owns``) is deterministic.
    """
    uris = [uri for prefix in prefixes for uri in committed_files(output, prefix)]
    for uri in uris:
        yield from read_jsonl(uri)


def prepare_output(output: str, *, overwrite: bool, shard: ShardSpec | None = None) -> bool:
    """Decide whether to run: ``False`` means already committed, skip (the rerun no-op).

    An uncommitted output (a first run, or one killed half-way) is simply written again: its leftovers
    are listed in no manifest and get overwritten. With ``overwrite`` a committed output's manifest is
    removed *first* (so no reader trusts it while we rewrite), then its data.

    A sharded pod with ``overwrite`` also removes ``_SUCCESS`` and the shard manifests of *another* shard
    count (a previous run split differently), even when its own shard was never committed: else the old
    set stays complete and is what readers (and the merge) see. It never removes a manifest of its own
    count but another index: the other pods of the new run start at once, and one of them may already
    have committed.
    """
    storage.check_access(output)
    if overwrite and shard is not None and shard.count > 1:
        storage.delete(manifest_uri(output))
        for count, found in _shard_manifest_uris(output).items():
            if count != shard.count:
                for uri in found.values():
                    storage.delete(uri)
    if not is_committed(output, shard):
        return True
    if not overwrite:
        return False
    storage.delete(manifest_uri(output))
    if shard is None or shard.count == 1:
        storage.delete_prefix(output)
    else:
        storage.delete(shard_manifest_uri(output, shard))
    return True
