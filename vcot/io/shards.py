"""JSONL(.gz) shards: the record files every stage reads and writes.

Writers are deterministic (sorted keys, gzip with no timestamp or name) so the same records give
byte-identical files, and they hash while they write so the manifest gets each file's sha256 for free.
Lines are encoded with orjson and compressed in batches: a record stage writes millions of lines, and
``json.dumps`` alone cost more per record than parsing one input item (``docs/bench-convert.md``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from vcot.io import storage

DEFAULT_COMPRESSLEVEL = 6
"""gzip level of ``.jsonl.gz`` shards unless a stage picks another (convert uses 3: ``docs/bench-convert.md``)."""
WRITE_BATCH_BYTES = 1 << 18
"""Encoded lines are handed to gzip in batches of about this size: one compress call per batch, not per record."""
_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATACLASS
_ORJSON_OPTIONS |= orjson.OPT_PASSTHROUGH_DATETIME


@dataclass(frozen=True)
class ShardFile:
    """One committed file: its path relative to the output root, record count, sha256 and size."""

    path: str
    records: int
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shard_name(rank: int, world_size: int, suffix: str = ".jsonl.gz") -> str:
    """Rank-stamped file name: ``shard_name(3, 8) == "00003-of-00008.jsonl.gz"``."""
    return f"{rank:05d}-of-{world_size:05d}{suffix}"


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts bytes on their way to ``target``."""

    def __init__(self, target: IO[bytes]) -> None:
        self._target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.size += len(view)
        self._target.write(view)
        return len(view)


def encode_record(record: dict[str, Any]) -> bytes:
    r"""One JSONL line (newline included), UTF-8: keys sorted, no spaces, non-ASCII characters as they are.

    orjson writes what ``json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` writes
    for strings, integers, booleans, null, lists and objects, about 20x faster. Floats are written in their
    shortest form (``1e-7``, not ``1e-07``; the same value read back) and NaN/Infinity as ``null`` (valid JSON).
    What orjson refuses (integers beyond 64 bits, non-string keys, lone surrogates) or leaves to ``default``
    (dataclasses, dates: ``json`` refuses them too) goes through the json module as before.

    >>> encode_record({"b": [1, None], "a": "é"})
    b'{"a":"\xc3\xa9","b":[1,null]}\n'
    >>> encode_record({"big": 2**70, "ok": True})
    b'{"big":1180591620717411303424,"ok":true}\n'
    """
    try:
        return orjson.dumps(record, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return (json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def pack_lines(lines: bytes, compresslevel: int | None) -> bytes:
    """Encoded lines as they go into a shard file: one deterministic gzip member (no name, mtime 0), or as is.

    A ``.jsonl.gz`` shard is a series of such members, which every gzip reader reads as one stream. Packing
    a block is independent of what comes before it, so worker processes can compress their own blocks
    and the file is the same whichever process packed which block.

    >>> import gzip
    >>> gzip.decompress(pack_lines(b'{"a":1}\\n', 3) + pack_lines(b'{"a":2}\\n', 3))
    b'{"a":1}\\n{"a":2}\\n'
    """
    return gzip.compress(lines, compresslevel, mtime=0) if compresslevel is not None else lines


def dumps_record(record: dict[str, Any]) -> str:
    """:func:`encode_record` as text, without the newline."""
    return encode_record(record)[:-1].decode("utf-8")


class ShardAborted(Exception):
    """What an aborted shard writer closes its file with, so that an S3 upload is aborted, not completed."""


class JsonlShardWriter:
    """Write records to ``root/path`` as JSON lines, gzipped when ``path`` ends in ``.gz``.

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> with JsonlShardWriter(root, "train/00000-of-00001.jsonl.gz") as writer:
    ...     writer.write({"id": "a"})
    >>> writer.result.records
    1
    """

    def __init__(self, root: str, path: str, *, compresslevel: int = DEFAULT_COMPRESSLEVEL) -> None:
        self.root = root
        self.path = path
        self.uri = storage.join(root, path)
        self.compresslevel: int | None = compresslevel if path.endswith(".gz") else None
        self._raw_cm = storage.open_uri(self.uri, "wb")
        self._raw = self._raw_cm.__enter__()
        self._hasher = _HashingWriter(self._raw)
        self._buffered = io.BufferedWriter(self._hasher, buffer_size=1 << 20)
        self.records = 0
        self.result: ShardFile | None = None
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._packed_any = False

    def write(self, record: dict[str, Any]) -> None:
        line = encode_record(record)
        self._batch.append(line)
        self._batch_bytes += len(line)
        self.records += 1
        if self._batch_bytes >= WRITE_BATCH_BYTES:
            self._flush_batch()

    def write_block(self, block: bytes, records: int) -> None:
        """Append ``records`` lines already packed by :func:`pack_lines` (with this file's ``compresslevel``)."""
        self._flush_batch()
        self._buffered.write(block)
        self._packed_any = True
        self.records += records

    def _flush_batch(self) -> None:
        if self._batch:
            self._buffered.write(pack_lines(b"".join(self._batch), self.compresslevel))
            self._packed_any = True
            self._batch.clear()
            self._batch_bytes = 0

    def close(self) -> ShardFile:
        if self.result is None:
            self._flush_batch()
            if self.compresslevel is not None and not self._packed_any:
                self._buffered.write(pack_lines(b"", self.compresslevel))  # an empty file is still valid gzip
            self._buffered.flush()
            self._raw_cm.__exit__(None, None, None)
            self.result = ShardFile(self.path, self.records, self._hasher.sha256.hexdigest(), self._hasher.size)
        return self.result

    def abort(self) -> None:
        """Stop without finishing: whatever was written is listed in no manifest, and an S3 upload is aborted
        rather than completed (closed as if done, the truncated shard would sit at its final name, whole-looking)."""
        stopped = ShardAborted(self.path)
        try:
            self._raw_cm.__exit__(ShardAborted, stopped, None)
        except Exception:  # noqa: BLE001 - best effort on an already failing path
            pass

    def __enter__(self) -> JsonlShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_jsonl(root: str, path: str, records: Iterable[dict[str, Any]]) -> ShardFile:
    """Write all ``records`` to one shard and return its entry."""
    with JsonlShardWriter(root, path) as writer:
        for record in records:
            writer.write(record)
    return writer.close()


class SplitWriters:
    """One record shard per split (``train/``, ``val/``, ``rejected/``) of one pod: closed together, or aborted.

    >>> import tempfile
    >>> outputs = SplitWriters(tempfile.mkdtemp(), "00000-of-00001")
    >>> outputs.write("val", {"id": "a"})
    >>> [(f.path, f.records) for f in outputs.close()]
    [('train/00000-of-00001.jsonl.gz', 0), ('val/00000-of-00001.jsonl.gz', 1), ('rejected/00000-of-00001.jsonl.gz', 0)]
    """

    def __init__(
        self,
        root: str,
        name: str,
        splits: Sequence[str] = ("train", "val", "rejected"),
        *,
        compresslevel: int = DEFAULT_COMPRESSLEVEL,
    ) -> None:
        self.writers = {
            split: JsonlShardWriter(root, f"{split}/{name}.jsonl.gz", compresslevel=compresslevel) for split in splits
        }

    def write(self, split: str, record: dict[str, Any]) -> None:
        self.writers[split].write(record)

    def write_block(self, split: str, block: bytes, records: int) -> None:
        self.writers[split].write_block(block, records)

    def close(self) -> list[ShardFile]:
        return [writer.close() for writer in self.writers.values()]

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()


def write_file(root: str, path: str, data: bytes, *, records: int = 0) -> ShardFile:
    """Write a small file (a report, a config) to ``root/path`` and return its manifest entry.

    >>> import tempfile
    >>> entry = write_file(tempfile.mkdtemp(), "quality.json", b"{}")
    >>> entry.path, entry.bytes, entry.sha256[:12]
    ('quality.json', 2, '44136fa355b3')
    """
    storage.write_bytes(storage.join(root, path), data)
    return ShardFile(path, records, hashlib.sha256(data).hexdigest(), len(data))


def file_entry(local: Path, path: str, *, records: int = 0) -> ShardFile:
    """The manifest entry (as ``path``) of a local file, hashed in blocks: for files written elsewhere first."""
    digest = hashlib.sha256()
    with open(local, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return ShardFile(path, records, digest.hexdigest(), local.stat().st_size)


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes and counts the bytes it passes on from ``source``."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


def check_file(uri: str, expected: ShardFile, sha256: str, size: int) -> None:
    """Refuse a file whose bytes are not the ones its manifest lists (changed, truncated or corrupted after commit)."""
    if (sha256, size) != (expected.sha256, expected.bytes):
        raise storage.StorageError(
            f"{uri} is not the file its manifest lists (sha256 {sha256[:12]}, {size} bytes; listed "
            f"{expected.sha256[:12]}, {expected.bytes} bytes): it changed after commit; rerun the stage that wrote it"
        )


def read_verified(uri: str, expected: ShardFile) -> bytes:
    """The whole file at ``uri``, checked against its manifest entry."""
    data = storage.read_bytes(uri)
    check_file(uri, expected, hashlib.sha256(data).hexdigest(), len(data))
    return data


def read_jsonl(uri: str, expected: ShardFile | None = None) -> Iterator[dict[str, Any]]:
    """Yield the records of one JSONL(.gz) file; a malformed line raises with its line number.

    With ``expected`` (its manifest entry) the bytes are hashed on the way and checked once the file is read
    to its end: a reader that stops early has not checked it.
    """
    with storage.open_uri(uri, "rb") as raw:
        hashing = _HashingReader(raw)
        stream = io.BufferedReader(hashing, 1 << 20)
        try:
            lines = gzip.GzipFile(fileobj=stream) if uri.endswith(".gz") else stream
            for line_number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise storage.StorageError(f"{uri} line {line_number} is not valid JSON: {exc}") from exc
            while stream.read(1 << 20):  # whatever gzip left unread is hashed too
                pass
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise storage.StorageError(f"{uri} is not readable gzip ({exc}): rerun the stage that wrote it") from exc
    if expected is not None:
        check_file(uri, expected, hashing.sha256.hexdigest(), hashing.size)
