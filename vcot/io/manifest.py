"""Commit stage outputs with a ``_SUCCESS`` manifest, written last.

S3 has no atomic rename, so an output is only *committed* once its manifest exists: data files first,
manifest last. Readers trust only committed outputs and only the files their manifest lists, so a
writer killed half-way leaves nothing anyone will read.

Sharded outputs (N pods writing disjoint parts) commit per shard under ``_shards/``; the pod that
sees all N shard manifests merges them into ``_SUCCESS``. Readers also accept a complete set of shard
manifests, so the next stage can tell when all N are done even if no merge happened yet. Shard manifests
carry the run id of the pods that wrote them (:class:`ShardSpec`): only the shards of one run are merged,
so an ``--overwrite`` rerun never publishes a mix of its shards and an older run's (a rerun without it
adopts the shards already committed: see :func:`prepare_output`).

Every stage starts with :func:`prepare_output`, which refuses an output that overlaps one of its inputs or
that another stage committed; every reader names the stage(s) it expects (``expect_stage``) and checks the
sha256 the manifest lists for each file it reads through.

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

from vcot import __version__
from vcot.errors import ConfigError, MissingError, NotCommittedError, StorageError
from vcot.io import storage
from vcot.io.shards import ShardFile, read_jsonl, read_verified
from vcot.log import get_logger

log = get_logger(__name__)

SUCCESS = "_SUCCESS"
SHARDS_DIR = "_shards"
MANIFEST_VERSION = 1
JOB_INDEX_ENV = "JOB_COMPLETION_INDEX"
"""Set by Kubernetes in every pod of an Indexed Job: the default shard index of every sharded stage."""
NOT_CONFIG = ("overwrite", "workers", "run_id")
"""Options that say how to run, not what is made: left out of the manifest so a rerun with them gives the same bytes."""
RECORD_STAGES = ("convert", "distill")
"""The stages whose outputs are records (``train/``, ``val/``, ``rejected/`` JSONL): what distill, tokenize and
evaluate read."""
_SHARD_RE = re.compile(r"(\d{5})-of-(\d{5})\.json$")


@dataclass(frozen=True)
class ShardSpec:
    """Which part of the work this pod does: ``index`` in ``[0, count)``, of the run ``run``.

    ``run`` is what the pods of one run share without talking (``--run-id``; see :func:`default_run_id`):
    the merge only combines shard manifests of one run.
    """

    index: int = 0
    count: int = 1
    run: str = ""
    made: str = ""
    """What the shard is made of (:func:`default_run_id` of the settings and code): a committed shard of another run
    is adopted only when it was made of the same."""

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
    def resolve(cls, index: int | None, count: int, run: str = "", made: str = "") -> ShardSpec:
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
        return cls(index, count, run, made)


def shard_of(config: Any, made_of: dict[str, Any] | None = None) -> ShardSpec:
    """The shard of a sharded stage's config: its ``shard_index``, ``num_shards`` and ``run_id``.

    Without a ``run_id`` the run is :func:`default_run_id` of the config as it is now; ``made_of``: what else the
    output is made of besides the flags (the content of a file a flag names: tokenize's mixture).
    """
    from vcot.config import redacted

    made = default_run_id({**redacted(config), **(made_of or {})})
    return ShardSpec.resolve(config.shard_index, config.num_shards, config.run_id or made, made)


RUN_ID_HELP = (
    "Sharded runs: what the pods of one run share, so that only their shards are merged (Kubernetes Jobs set it to "
    "the Job's uid). Default: a hash of the settings and code version; give an --overwrite rerun over changed input "
    "data its own."
)


def default_run_id(config: dict[str, Any]) -> str:
    """The run id of pods started without ``--run-id``: a hash of what they make (config and code version).

    Pods of one run share their flags, so they agree; a rerun that changes a setting or the code gets
    another id, so its shards never merge with the old ones. A rerun with the same settings and code makes
    the same files, except where the input data changed in place: give such a rerun its own ``--run-id``
    (Kubernetes Jobs set it to the Job's uid).

    >>> default_run_id({"a": 1, "shard_index": 0}) == default_run_id({"a": 1, "shard_index": 3, "overwrite": True})
    True
    """
    made = {k: v for k, v in config.items() if k not in (*NOT_CONFIG, "shard_index")}
    return _sha256(storage.dumps_json({"config": made, "code": code_version()}))[:12]


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


def _say_if_inputs_changed(output: str) -> None:
    """Warn that a committed output a rerun skips was made from inputs written again or removed since; an input that
    cannot be read now is no reason to fail the skip."""
    try:
        changed = changed_inputs(output)
    except StorageError as exc:
        log.info("inputs_not_compared", output=output, reason=str(exc).splitlines()[0][:200])
        return
    if changed:
        log.warning("committed_from_changed_inputs", output=output, changed=changed,
                    hint="they were written again or removed since this output was: pass --overwrite to redo it")


def changed_inputs(output: str) -> list[str]:
    """The inputs of committed ``output`` whose manifest is not the one it recorded (:func:`lineage`): written again
    (an ``--overwrite`` rerun) or gone since. A rerun without ``--overwrite`` skips the output all the same."""
    recorded = [entry for entry in read_manifest(output).get("inputs") or []
                if isinstance(entry, dict) and entry.get("manifest_sha256")]  # fmt: skip
    return [str(entry.get("uri")) for entry in recorded if not is_current(entry)]


def is_current(recorded: dict[str, Any]) -> bool:
    """Whether an input a manifest recorded (:func:`lineage`) is as it was then: its manifest the same one."""
    sha = recorded.get("manifest_sha256")
    return bool(sha) and lineage(str(recorded.get("uri"))).get("manifest_sha256") == sha


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
        manifest["shard"] = {"index": shard.index, "count": shard.count, "run": shard.run, "made": shard.made}
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
    complete_shard_set(output, finalize, shard=shard)
    return manifest


Finalize = Callable[[list[dict[str, Any]]], Sequence[ShardFile]]
"""Writes files made from all shard manifests (a merged report) and returns their entries for ``_SUCCESS``."""


def complete_shard_set(
    output: str, finalize: Finalize | None = None, *, shard: ShardSpec | None = None
) -> dict[str, Any] | None:
    """If every shard is committed, write the merged ``_SUCCESS`` (and return it); else do nothing (``None``).

    ``finalize`` gets the shard manifests and writes what belongs to the whole output (convert's merged
    quality report) *before* ``_SUCCESS``, which lists those files too: a reader that sees ``_SUCCESS`` finds
    them. Whoever notices the complete set does this; every pod writes the same bytes, so a race is harmless.
    A pod that finds its shard already committed calls this again, so a set whose last pod died before
    writing ``_SUCCESS`` still gets it. A pod passes its own ``shard``: only a complete set of *its* run and
    shard count is merged, never shards left by another run (an ``--overwrite`` rerun with the same count
    whose first pod commits before the others have started).
    """
    parts = _shard_manifests(output, shard)
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


def _run_of(part: dict[str, Any]) -> str:
    return str(part.get("shard", {}).get("run", ""))


def _shard_manifests(output: str, shard: ShardSpec | None = None) -> list[dict[str, Any]] | None:
    """The shard manifests of a complete set written by one run, else ``None``.

    With ``shard``: the set of its count and run only. Without: the smallest complete count (a reader).
    """
    by_count = _shard_manifest_uris(output)
    counts = [shard.count] if shard is not None else sorted(by_count)
    for count in counts:
        found = by_count.get(count, {})
        if set(found) != set(range(count)):
            continue
        parts = [storage.read_json(found[index]) for index in range(count)]
        runs = {_run_of(part) for part in parts}
        made = {part.get("shard", {}).get("made") for part in parts}
        if len(runs) == 1 and len(made) == 1 and (shard is None or runs == {shard.run}):
            return parts
    return None


def merge_shard_manifests(output: str) -> dict[str, Any] | None:
    """The merged manifest of a complete shard set (deterministic), or ``None`` while shards are missing."""
    parts = _shard_manifests(output)
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
    """Whether ``output`` has its ``_SUCCESS``; with a ``shard`` of several, whether its run committed that shard."""
    if shard is not None and shard.count > 1:
        part = _read_if_there(shard_manifest_uri(output, shard))
        return part is not None and _run_of(part) == shard.run
    return storage.exists(manifest_uri(output))


def _expected(stages: tuple[str, ...]) -> str:
    if set(stages) == set(RECORD_STAGES):
        return "records (a convert or distill output)"
    return "a " + " or ".join(stages) + " output"


def read_manifest(output: str, expect_stage: str | Sequence[str] | None = None) -> dict[str, Any]:
    """The manifest of a committed output; refuses (clearly) an output that was never committed.

    ``expect_stage``: the stage(s) whose output the caller can read (e.g. :data:`RECORD_STAGES`); another
    stage's output is refused in one line instead of failing later on bytes of the wrong kind.
    """
    uri = manifest_uri(output)
    if storage.exists(uri):
        found = storage.read_json(uri)
    else:
        found = merge_shard_manifests(output)
    if found is None:
        raise NotCommittedError(
            f"{output} has no {SUCCESS} manifest: the stage that writes it has not finished or failed. "
            "Run (or rerun) that stage first; partial outputs are never read"
        )
    expected = (expect_stage,) if isinstance(expect_stage, str) else tuple(expect_stage or ())
    if expected and found.get("stage") not in expected:
        raise ConfigError(f"{output} is a {found.get('stage')} output; expected {_expected(expected)}")
    return found


def _listed(found: dict[str, Any], output: str, prefix: str) -> list[tuple[str, ShardFile]]:
    return [(storage.join(output, f["path"]), ShardFile(**f)) for f in found["files"] if f["path"].startswith(prefix)]


def committed_files(output: str, prefix: str = "", *, expect_stage: str | Sequence[str] | None = None) -> list[str]:
    """URIs of the files a committed output lists (optionally only those under ``prefix``, e.g. ``train/``)."""
    return [uri for uri, _ in _listed(read_manifest(output, expect_stage), output, prefix)]


def committed_entries(
    output: str, prefix: str = "", *, expect_stage: str | Sequence[str] | None = None
) -> list[tuple[str, ShardFile]]:
    """``(uri, entry)`` of each file a committed output lists under ``prefix`` (entries: sha256 and size)."""
    return _listed(read_manifest(output, expect_stage), output, prefix)


def read_committed(
    output: str, prefix: str = "", *, expect_stage: str | Sequence[str] | None = None
) -> Iterator[tuple[str, bytes]]:
    """``(uri, bytes)`` of each file a committed output lists under ``prefix``, read whole and checked against
    the sha256 and size its manifest recorded (a changed or corrupted object is an error naming it)."""
    for uri, entry in _listed(read_manifest(output, expect_stage), output, prefix):
        yield uri, read_verified(uri, entry)


def read_listed(output: str, path: str) -> bytes:
    """One file of a committed output by its manifest path (``metrics.json``), checked like :func:`read_committed`."""
    for uri, entry in _listed(read_manifest(output), output, path):
        if entry.path == path:
            return read_verified(uri, entry)
    raise StorageError(f"{output}'s {SUCCESS} lists no {path}: rerun the stage that wrote it with --overwrite")


def committed_records(
    output: str,
    prefixes: Sequence[str] = ("train/", "val/"),
    *,
    expect_stage: str | Sequence[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """The records of a committed output's files under each of ``prefixes`` in turn, in manifest order.

    The manifest is read once, before the first record; positions in this stream are stable across runs,
    so round-robin sharding over it (``ShardSpec.owns``) is deterministic. Each file is checked against its
    manifest sha256 once read to its end.
    """
    found = read_manifest(output, expect_stage)
    listed = [item for prefix in prefixes for item in _listed(found, output, prefix)]
    for uri, entry in listed:
        yield from read_jsonl(uri, entry)


def committed_stage(output: str) -> str | None:
    """The stage that committed ``output`` (or one of its shards), or ``None`` when nothing vcot wrote is there."""
    if storage.exists(manifest_uri(output)):
        return storage.read_json(manifest_uri(output)).get("stage")
    for found in _shard_manifest_uris(output).values():
        for uri in found.values():
            return storage.read_json(uri).get("stage")
    return None


def check_output(output: str, *, stage: str, inputs: Sequence[str | None]) -> None:
    """Refuse an output that would destroy or shadow what the stage reads (:class:`ConfigError`, exit 2).

    An output that is an input, holds one or lies inside one would delete it on ``--overwrite``; an output
    another stage committed would be deleted by ``--overwrite`` or taken as already done without it.
    """
    for uri in inputs:
        if uri and storage.overlaps(output, uri):
            raise ConfigError(
                f"--output {output} and the input {uri} are the same place or one holds the other: "
                "--overwrite would delete the input; write the output to its own folder"
            )
    found = committed_stage(output)
    if found is not None and found != stage:
        raise ConfigError(
            f"--output {output} holds a committed {found} output: {stage} never replaces another stage's output; "
            "choose another --output"
        )


def committed_holder(uri: str) -> tuple[str, str] | None:
    """``(output, stage)`` of the committed output that is ``uri`` or holds it (its nearest such folder), else ``None``.

    Walks up from ``uri`` to the bucket root (or ``/``): one manifest lookup per level.
    """
    place = storage.canonical(uri).rstrip("/") or "/"
    if not storage.is_s3(place):
        place = os.path.realpath(storage.local_path(place))
    while True:
        stage = committed_stage(place)
        if stage is not None:
            return place, stage
        try:
            above = storage.parent(place)
        except ValueError:  # a bucket root: nothing above it
            return None
        if above == place:
            return None
        place = above


def check_not_inside_committed(uri: str, *, flag: str = "--output") -> None:
    """Refuse to write a file (a tool's page, not a stage output) inside a committed stage output: its manifest does
    not list the file, and that stage's ``--overwrite`` deletes it (:class:`ConfigError`, exit 2)."""
    found = committed_holder(uri)
    if found is not None:
        output, stage = found
        raise ConfigError(
            f"{flag} {uri} lies inside the committed {stage} output {output}: its manifest does not list it and "
            f"{stage} --overwrite would delete it; write it outside that folder"
        )


def prepare_output(
    output: str,
    *,
    stage: str,
    inputs: Sequence[str | None],
    overwrite: bool,
    shard: ShardSpec | None = None,
    finalize: Finalize | None = None,
) -> bool:
    """Decide whether to run: ``False`` means already committed, skip (the rerun no-op).

    First :func:`check_output`. An uncommitted output (a first run, or one killed half-way) is simply written
    again: its leftovers are listed in no manifest and get overwritten. With ``overwrite`` a committed
    output's manifest is removed *first* (so no reader trusts it while we rewrite), then its data.

    Sharded pods (see :func:`_prepare_shard`) skip a committed output too, and a shard already committed; a
    pod that skips its shard completes the set (``finalize`` as in :func:`commit`) if it is now complete
    without ``_SUCCESS`` (the pod that completed it died first, or it completed by adopting shards).
    """
    storage.check_access(output)
    check_output(output, stage=stage, inputs=inputs)
    if shard is not None and shard.count > 1:
        if _prepare_shard(output, shard, overwrite=overwrite):
            return True
        if not is_committed(output):
            complete_shard_set(output, finalize, shard=shard)
        return False
    if not overwrite:
        if is_committed(output):
            _say_if_inputs_changed(output)
            return False
        return _shard_manifests(output) is None
    storage.delete(manifest_uri(output))
    storage.delete_prefix(output)
    return True


def _prepare_shard(output: str, shard: ShardSpec, *, overwrite: bool) -> bool:
    """:func:`prepare_output` for one pod of a sharded run.

    Without ``overwrite`` it skips a committed output (``_SUCCESS``, or a complete set of one run's shards)
    and its shard if some run committed it from the same settings and code: a shard of another run (a Job deleted
    and applied again) is *adopted*, its manifest relabelled with this run, so that the resumed run's set can
    complete. A shard made otherwise (a setting changed in between) is made again: adopted, the set would mix two
    settings under a ``_SUCCESS`` that names one.

    With ``overwrite`` it removes ``_SUCCESS``, its own shard's manifest and every manifest of *another* run or
    shard count, even when its own shard was never committed: else the old set stays complete and is what
    readers (and the merge) see, and a later run could adopt old shards. It never removes a manifest of its
    own run: the other pods of the new run start at once, and one of them may already have committed.
    """
    if not overwrite:
        if is_committed(output) or _shard_manifests(output) is not None:
            return False
        own = shard_manifest_uri(output, shard)
        part = _read_if_there(own)
        if part is None or part.get("shard", {}).get("made") != shard.made:
            return True
        if _run_of(part) != shard.run:
            storage.write_json(own, {**part, "shard": {**part.get("shard", {}), "run": shard.run}})
        return False
    storage.delete(manifest_uri(output))
    for count, found in _shard_manifest_uris(output).items():
        for index, uri in found.items():
            if count != shard.count or index == shard.index:
                storage.delete(uri)
                continue
            part = _read_if_there(uri)
            if part is not None and _run_of(part) != shard.run:
                storage.delete(uri)
    return True


def _read_if_there(uri: str) -> dict[str, Any] | None:
    """A small JSON document, or ``None`` when it does not exist (or was just deleted by another pod). Storage that
    cannot be reached raises: read as "not there", a committed shard would be trained or converted again."""
    try:
        return storage.read_json(uri)
    except MissingError:
        return None
