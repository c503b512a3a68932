"""One way to reach data: every path is a URI (``s3://bucket/key`` or a local path), opened through here.

S3 settings come from the standard environment, so what runs in a pod runs the same against a local server:

- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or any boto3 credential source),
- ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) for MinIO, SeaweedFS, R2, GCS interop...,
- ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (default ``us-east-1``),
- ``VCOT_S3_ADDRESSING_STYLE``: ``path`` (default with a custom endpoint: MinIO wants it), ``virtual`` or ``auto``,
- ``VCOT_S3_MAX_ATTEMPTS``: attempts per request on transient errors (throttling, 5xx, timeouts), default 5.

Storage problems become a :class:`StorageError` whose one-line message names the endpoint and bucket;
invalid settings (a malformed endpoint URL, a bad ``VCOT_S3_*`` value) a :class:`ConfigError` (exit code 2).

Schemes are case-insensitive (RFC 3986): ``S3://bucket/key`` is ``s3://bucket/key``, and the URIs built here
(:func:`join`, :func:`parent`, :func:`canonical`) are written with ``s3://``. A form that is neither (``s3:/bucket``,
``s3:bucket``, ``s3://`` without a bucket, ``gs://...``, ``s3a://...``) is a :class:`ConfigError` naming what to
write, never a local folder called ``s3:``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from vcot.config import mask_url_credentials
from vcot.errors import ConfigError, MissingError, StorageError
from vcot.log import get_logger
from vcot.progress import Progress

log = get_logger(__name__)

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")
"""A URI scheme at the start of a string (two characters or more: ``C:`` is a drive, not a scheme)."""


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None
    region: str
    addressing_style: str
    max_attempts: int

    @classmethod
    def from_env(cls) -> S3Settings:
        """The settings of this environment; an invalid one is a :class:`ConfigError` (exit code 2)."""
        endpoint = None
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            if os.environ.get(name):
                endpoint = _checked_endpoint(name, os.environ[name])
                break
        style = os.environ.get("VCOT_S3_ADDRESSING_STYLE") or ("path" if endpoint else "auto")
        if style not in ("path", "virtual", "auto"):
            raise ConfigError(f"VCOT_S3_ADDRESSING_STYLE={style!r} is not valid: set it to path, virtual or auto")
        attempts = os.environ.get("VCOT_S3_MAX_ATTEMPTS", "5")
        if not attempts.isdigit() or int(attempts) < 1:
            raise ConfigError(f"VCOT_S3_MAX_ATTEMPTS={attempts!r} is not valid: set it to a positive integer")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(endpoint, region, style, int(attempts))

    @property
    def endpoint_label(self) -> str:
        return mask_url_credentials(self.endpoint_url) if self.endpoint_url else f"AWS S3 ({self.region})"


def _checked_endpoint(name: str, url: str) -> str:
    """``url`` if it is an http(s) URL with a host (boto3 would fail deep in botocore, and only later).

    >>> _checked_endpoint("AWS_ENDPOINT_URL_S3", "not a url")
    Traceback (most recent call last):
    ...
    vcot.errors.ConfigError: AWS_ENDPOINT_URL_S3='not a url' is not a URL: set it to http(s)://host[:port]
    """
    try:
        parsed = urllib.parse.urlsplit(url)
        valid = parsed.scheme in ("http", "https") and bool(parsed.hostname)
        parsed.port  # noqa: B018 - raises ValueError when the port is not a number
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(f"{name}={mask_url_credentials(url)!r} is not a URL: set it to http(s)://host[:port]")
    return url


@functools.lru_cache(maxsize=8)
def _client_for(settings: S3Settings, credentials_key: tuple[str | None, ...]) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        s3={"addressing_style": settings.addressing_style},
        connect_timeout=10,
        read_timeout=120,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config
    )


def s3_client() -> Any:
    """A boto3 S3 client for the current environment and process (cached; a changed environment gets a new one).

    Keyed by process id too: a forked worker (e.g. a DataLoader worker loading images) must not share its
    parent's connection pool.
    """
    credentials_key = tuple(
        os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    ) + (str(os.getpid()),)
    return _client_for(S3Settings.from_env(), credentials_key)


# --------------------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------------------


def is_s3(uri: str) -> bool:
    """Whether ``uri`` is an S3 URI, whatever the case of its scheme.

    >>> is_s3("s3://b/k"), is_s3("S3://b/k"), is_s3("data/s3://b")
    (True, True, False)
    """
    return uri[: len(S3_SCHEME)].lower() == S3_SCHEME


def uri_problem(uri: str) -> str | None:
    """Why ``uri`` is neither an ``s3://bucket/...`` URI nor a local path (one line saying what to write), or ``None``.

    >>> uri_problem("S3://bucket/key") is None, uri_problem("runs/a:b") is None, uri_problem("C:/data") is None
    (True, True, True)
    >>> uri_problem("s3:/bucket/key")
    "'s3:/bucket/key' is not an S3 URI: write s3://bucket/key"
    >>> uri_problem("s3://")
    "'s3://' names no bucket: write s3://BUCKET/prefix"
    >>> uri_problem("gs://bucket/key")
    "'gs://bucket/key': gs:// is not supported: use an s3:// URI (any S3-compatible endpoint) or a local path"
    """
    if is_s3(uri):
        bucket = uri[len(S3_SCHEME) :].partition("/")[0]
        return None if bucket else f"{uri!r} names no bucket: write s3://BUCKET/prefix"
    scheme = _SCHEME.match(uri)
    if scheme is None or uri[: len(FILE_SCHEME)].lower() == FILE_SCHEME:
        return None
    name = scheme.group(0)[:-1]
    if name.lower() == "s3":
        return f"{uri!r} is not an S3 URI: write s3://{uri[len(name) + 1 :].lstrip('/') or 'BUCKET/prefix'}"
    if uri[len(name) + 1 :].startswith("//"):
        return f"{uri!r}: {name}:// is not supported: use an s3:// URI (any S3-compatible endpoint) or a local path"
    return None


def check_uri(uri: str) -> str:
    """``uri`` itself, or a :class:`ConfigError` when it is no URI storage can reach (:func:`uri_problem`)."""
    problem = uri_problem(uri)
    if problem is not None:
        raise ConfigError(problem)
    return uri


def canonical(uri: str) -> str:
    """``uri`` with an S3 scheme written ``s3://`` (checked: :func:`check_uri`).

    >>> canonical("S3://bucket/Key"), canonical("data/x.json")
    ('s3://bucket/Key', 'data/x.json')
    """
    return _s3_lowered(check_uri(uri))


def _s3_lowered(uri: str) -> str:
    """``uri`` with ``S3://`` written ``s3://``, unchecked (cheap enough for a call per record)."""
    if uri.startswith(S3_SCHEME) or not is_s3(uri):
        return uri
    return S3_SCHEME + uri[len(S3_SCHEME) :]


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    check_uri(uri)
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    return bucket, key


def local_path(uri: str) -> Path:
    """The local path of ``uri`` (a path or ``file://``); a :class:`ConfigError` for what only looks like one
    (``s3:/bucket``, ``gs://...``: :func:`uri_problem`), which would otherwise become a folder named ``s3:``."""
    check_uri(uri)
    return Path(uri[len(FILE_SCHEME) :] if uri[: len(FILE_SCHEME)].lower() == FILE_SCHEME else uri)


def absolute(uri: str) -> str:
    """``uri`` with a relative local path made absolute, so that what records name from it (their images) is found
    from any working folder; other URIs as they are.

    >>> import os
    >>> absolute("s3://b/x"), absolute("/data/x"), absolute("data/x") == os.path.join(os.getcwd(), "data/x")
    ('s3://b/x', '/data/x', True)
    """
    if "://" in uri or uri.startswith("/"):
        return uri
    return os.path.abspath(uri) + ("/" if uri.endswith("/") else "")


def place(uri: str) -> str:
    """What ``uri`` names, to compare two spellings of it: the S3 scheme lowered, no trailing ``/``; a local path
    resolved (absolute, ``file://``, ``//``, ``./`` and symlinks). An S3 key's ``//`` is a key of its own.

    >>> place("S3://b/runs/r1/") == place("s3://b/runs/r1"), place("s3://b/r1") == place("s3://b/r2")
    (True, False)
    >>> place("/tmp//x/./y/") == place("file:///tmp/x/y")
    True
    """
    if is_s3(uri):
        return canonical(uri).rstrip("/")
    return os.path.realpath(local_path(check_uri(uri)))


def join(base: str, *parts: str) -> str:
    """Join URI parts with single slashes: ``join("s3://b/run", "train", "x.jsonl")``."""
    out = _s3_lowered(base).rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def parent(uri: str) -> str:
    """The folder that holds ``uri`` (a file or a folder; a trailing slash is ignored).

    >>> parent("s3://bucket/run/viscot.json")
    's3://bucket/run'
    >>> parent("s3://bucket/run/")
    's3://bucket'
    >>> parent("data/viscot.json"), parent("viscot.json"), parent("/viscot.json")
    ('data', '.', '/')
    >>> parent("s3://bucket")
    Traceback (most recent call last):
    ...
    ValueError: 's3://bucket' is a bucket root: it has no parent folder
    """
    trimmed = canonical(uri).rstrip("/") or uri
    if is_s3(trimmed):
        if "/" not in trimmed[len(S3_SCHEME) :]:
            raise ValueError(f"{uri!r} is a bucket root: it has no parent folder")
        return trimmed.rsplit("/", 1)[0]
    if "/" not in trimmed:
        return "."
    return trimmed.rsplit("/", 1)[0] or "/"


def _place(uri: str) -> tuple[str, PurePosixPath]:
    """Where ``uri`` is: its bucket (or the local file system) and an absolute path (symlinks resolved)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return S3_SCHEME + bucket, PurePosixPath("/", key)
    return "file", PurePosixPath(os.path.realpath(local_path(uri)))


def overlaps(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are the same place or one holds the other (deleting one deletes part of the other).

    >>> overlaps("s3://b/d1", "s3://b/d1/data/"), overlaps("s3://b/d1/data", "s3://b/d1")
    (True, True)
    >>> overlaps("s3://b/d1", "s3://b/d10"), overlaps("s3://b/d1", "s3://c/d1"), overlaps("/tmp/x", "s3://b/tmp/x")
    (False, False, False)
    """
    (where_a, path_a), (where_b, path_b) = _place(a), _place(b)
    return where_a == where_b and (path_a.is_relative_to(path_b) or path_b.is_relative_to(path_a))


def relative(uri: str, base: str) -> str:
    """``uri`` relative to the prefix ``base``."""
    uri, base = canonical(uri), canonical(base).rstrip("/") + "/"
    if not uri.startswith(base):
        raise ValueError(f"{uri!r} is not under {base!r}")
    return uri[len(base) :]


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def _describe(uri: str) -> str:
    if not is_s3(uri):
        return f"local path {uri}"
    bucket, key = split_s3(uri)
    return f"bucket {bucket!r} (key {key!r}) at endpoint {S3Settings.from_env().endpoint_label}"


@contextmanager
def storage_errors(uri: str) -> Iterator[None]:
    """Turn botocore/OS failures on ``uri`` into one clear :class:`StorageError` line."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise MissingError(f"{_describe(uri)} does not exist ({exc.strerror or exc})") from exc
    except PermissionError as exc:
        raise StorageError(f"no permission on {_describe(uri)}: {exc}") from exc
    except Exception as raised:  # botocore raises many types; classify by name and code, re-raise the rest
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        exc = getattr(raised, "backend_error", raised)  # smart_open wraps botocore errors in OSError...
        if not isinstance(exc, (ClientError, BotoCoreError)) and isinstance(raised.__cause__, (ClientError, BotoCoreError)):
            exc = raised.__cause__  # ...or in a ValueError ("the bucket ... does not exist, or is forbidden")

        if isinstance(exc, NoCredentialsError):
            raise StorageError(
                f"no S3 credentials for {_describe(uri)}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from raised
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken"):
                hint = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
            elif code in ("NoSuchBucket",):
                hint = "create the bucket or fix the URI"
            elif code in ("NoSuchKey", "404", "NotFound"):
                raise MissingError(f"S3 refused access to {_describe(uri)}: {code}: it does not exist") from raised
            else:
                hint = str(exc)
            raise StorageError(f"S3 refused access to {_describe(uri)}: {code}: {hint}") from raised
        if isinstance(exc, BotoCoreError):
            raise StorageError(
                f"cannot reach {_describe(uri)}: {exc}. Check AWS_ENDPOINT_URL_S3 and that the server is up"
            ) from raised
        raise


# --------------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------------


@contextmanager
def open_uri(uri: str, mode: str = "rb", *, compression: str = "disable") -> Iterator[IO[Any]]:
    """Open a URI like ``open``. Compression is off unless asked (``"infer_from_extension"``)."""
    import smart_open
    import smart_open.s3

    if not is_s3(uri):
        path = local_path(uri)
        if any(flag in mode for flag in "wa"):
            path.parent.mkdir(parents=True, exist_ok=True)
        uri = str(path)
        params: dict[str, Any] = {}
    else:
        split_s3(uri)
        params = {"client": s3_client()}
        # Our client retries (VCOT_S3_MAX_ATTEMPTS): smart_open would retry each failed connection 6 times more,
        # 10 s apart, and then raise a bare OSError that names no endpoint.
        smart_open.s3.RETRY.exceptions = []
    with storage_errors(uri):  # closing too: an S3 write's last part and its completion are sent on close
        handle = smart_open.open(uri, mode, compression=compression, transport_params=params)
        with handle:
            yield handle


def read_bytes(uri: str) -> bytes:
    with open_uri(uri, "rb") as handle:
        return handle.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object. Local files are written to a temporary name and renamed, so never half-written."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with storage_errors(uri):
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per writer: threads share a pid, and so do pods on a shared volume (each is pid 1).
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str) -> Any:
    try:
        return json.loads(read_bytes(uri))
    except json.JSONDecodeError as exc:
        raise StorageError(f"{_describe(uri)} is not valid JSON: {exc}") from exc


def dumps_json(value: Any) -> str:
    """The project's one JSON layout for small documents: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(uri: str, value: Any) -> None:
    write_text(uri, dumps_json(value))


def exists(uri: str) -> bool:
    if not is_s3(uri):
        return local_path(uri).exists()
    bucket, key = split_s3(uri)
    from botocore.exceptions import ClientError

    with storage_errors(uri):
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) not in ("404", "NoSuchKey", "NotFound"):
                raise
    if bucket not in _FOUND_BUCKETS:  # HEAD's 404 does not say which is missing: a bucket is a setting to fix
        check_access(f"s3://{bucket}")
    return False


_FOUND_BUCKETS: set[str] = set()
"""Buckets :func:`check_access` found in this process."""


def list_uris(prefix: str, suffix: str = "") -> list[str]:
    """Every object/file under ``prefix`` (recursive, as a directory), sorted; hidden temp files excluded."""
    prefix = canonical(prefix).rstrip("/")
    if not is_s3(prefix):
        root = local_path(prefix)
        if not root.is_dir():
            return []
        found = [  # under the prefix as written (relative() of each must work: rglob's paths are normalized)
            f"{prefix}/{path.relative_to(root).as_posix()}"
            for path in root.rglob("*")
            if path.is_file() and not path.name.startswith(".") and path.name.endswith(suffix)
        ]
        return sorted(found)
    bucket, key = split_s3(prefix)
    key_prefix = f"{key}/" if key else ""
    uris: list[str] = []
    with storage_errors(prefix):
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith(suffix) and not item["Key"].endswith("/"):
                    uris.append(f"{S3_SCHEME}{bucket}/{item['Key']}")
    return sorted(uris)


def delete(uri: str) -> None:
    """Delete one object/file if it exists."""
    if not is_s3(uri):
        local_path(uri).unlink(missing_ok=True)
        return
    bucket, key = split_s3(uri)
    with storage_errors(uri):
        s3_client().delete_object(Bucket=bucket, Key=key)


def delete_prefix(prefix: str) -> None:
    """Delete everything under ``prefix``."""
    if not is_s3(prefix):
        shutil.rmtree(local_path(prefix), ignore_errors=True)
        return
    bucket, _ = split_s3(prefix)
    keys = [split_s3(uri)[1] for uri in list_uris(prefix)]
    with storage_errors(prefix):
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            s3_client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


def check_access(uri: str) -> None:
    """Fail fast, with one clear line, when ``uri``'s bucket is unreachable or refuses our credentials (or ``uri``
    is no URI storage can reach: :func:`uri_problem`)."""
    if not is_s3(uri):
        check_uri(uri)
        return
    bucket, _ = split_s3(uri)
    from botocore.exceptions import ClientError

    with storage_errors(uri):
        try:
            s3_client().head_bucket(Bucket=bucket)
            _FOUND_BUCKETS.add(bucket)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(
                    f"bucket {bucket!r} does not exist at endpoint {S3Settings.from_env().endpoint_label}: "
                    "create it (make s3-up does locally) or fix the URI"
                ) from exc
            raise


def download_prefix(prefix: str, dest: Path, *, skip_suffixes: tuple[str, ...] = ()) -> Path:
    """Copy everything under ``prefix`` into the local folder ``dest``, skipping files already there unchanged
    (same size and the object's modification time, which a download stamps on the file): an adapter retrained
    at the same URI is fetched again, not served stale from the cache.

    ``skip_suffixes`` leaves out files by name ending, e.g. ``(".safetensors",)`` to fetch a model's
    tokenizer and processor without its weights.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if not is_s3(prefix):
        ignore = shutil.ignore_patterns(*(f"*{suffix}" for suffix in skip_suffixes)) if skip_suffixes else None
        shutil.copytree(local_path(prefix), dest, dirs_exist_ok=True, ignore=ignore)
        return dest
    todo: list[tuple[str, Path, int, float]] = []  # (uri, target, size, stamp)
    cached = 0
    for uri in list_uris(prefix):
        if skip_suffixes and uri.endswith(skip_suffixes):
            continue
        target = dest / relative(uri, prefix)
        bucket, key = split_s3(uri)
        with storage_errors(uri):
            head = s3_client().head_object(Bucket=bucket, Key=key)
        stamp, size = head["LastModified"].timestamp(), int(head["ContentLength"])
        if target.exists() and target.stat().st_size == size and target.stat().st_mtime == stamp:
            cached += 1
        else:
            todo.append((uri, target, size, stamp))
    if todo:  # one line up front (a 7B model is ~16 GB), then the bytes as they arrive (vcot.progress)
        size = sum(item[2] for item in todo)
        log.info("sync", source=prefix, dest=str(dest), files=len(todo), bytes=size, gib=round(size / 2**30, 2),
                 cached_files=cached)  # fmt: skip
        with Progress("sync_progress", size, unit="B", unit_scale=True, source=prefix) as progress:
            for uri, target, _, stamp in todo:
                bucket, key = split_s3(uri)
                target.parent.mkdir(parents=True, exist_ok=True)
                with storage_errors(uri):
                    s3_client().download_file(bucket, key, str(target), Callback=progress.update)
                os.utime(target, (stamp, stamp))
    return dest


def upload_dir(source: Path, prefix: str, *, move: bool = False) -> list[str]:
    """Copy the local folder ``source`` under ``prefix``; returns the URIs written.

    ``move=True`` moves each file to a local ``prefix`` instead (a rename on the same disk): a merged 7B model
    written to a scratch folder then copied would need twice its size free."""
    written: list[str] = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        uri = join(prefix, path.relative_to(source).as_posix())
        if is_s3(uri):
            bucket, key = split_s3(uri)
            with storage_errors(uri):
                s3_client().upload_file(str(path), bucket, key)
        else:
            target = local_path(uri)
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.move if move else shutil.copy2)(path, target)
        written.append(uri)
    return written
