"""JSONL(.gz) shards: the record files every stage reads and writes.

Writers are deterministic (sorted keys, gzip with no timestamp or name) so the same records give
byte-identical files, and they hash while they write so the manifest gets each file's sha256 for free.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import IO, Any

from vcot import storage


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


def dumps_record(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


class JsonlShardWriter:
    """Write records to ``root/path`` as JSON lines, gzipped when ``path`` ends in ``.gz``.

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> with JsonlShardWriter(root, "train/00000-of-00001.jsonl.gz") as writer:
    ...     writer.write({"id": "a"})
    >>> writer.result.records
    1
    """

    def __init__(self, root: str, path: str) -> None:
        self.root = root
        self.path = path
        self.uri = storage.join(root, path)
        self._raw_cm = storage.open_uri(self.uri, "wb")
        self._raw = self._raw_cm.__enter__()
        self._hasher = _HashingWriter(self._raw)
        self._buffered = io.BufferedWriter(self._hasher, buffer_size=1 << 20)
        self._stream: IO[bytes] = (
            gzip.GzipFile(fileobj=self._buffered, mode="wb", mtime=0, filename="", compresslevel=6)
            if path.endswith(".gz")
            else self._buffered
        )
        self.records = 0
        self.result: ShardFile | None = None

    def write(self, record: dict[str, Any]) -> None:
        self._stream.write((dumps_record(record) + "\n").encode("utf-8"))
        self.records += 1

    def close(self) -> ShardFile:
        if self.result is None:
            if self._stream is not self._buffered:
                self._stream.close()
            self._buffered.flush()
            self._raw_cm.__exit__(None, None, None)
            self.result = ShardFile(self.path, self.records, self._hasher.sha256.hexdigest(), self._hasher.size)
        return self.result

    def abort(self) -> None:
        """Stop without finishing: whatever was written is not listed in any manifest."""
        try:
            self._raw_cm.__exit__(None, None, None)
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


def read_jsonl(uri: str) -> Iterator[dict[str, Any]]:
    """Yield the records of one JSONL(.gz) file; a malformed line raises with its line number."""
    with storage.open_uri(uri, "rb", compression="infer_from_extension") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise storage.StorageError(f"{uri} line {line_number} is not valid JSON: {exc}") from exc
