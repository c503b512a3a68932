"""Errors a user can act on. Anything else is a bug and keeps its traceback."""

import importlib
from typing import Any


class VcotError(Exception):
    """A problem the user can fix; the message says what to set or do. Entrypoints print it on one line.

    ``exit_code`` is what the entrypoint returns (1 unless a subclass says otherwise, e.g. a flagged regression).
    """

    exit_code: int = 1


class StorageError(VcotError):
    """Storage is unreachable, refuses our credentials, or lacks what we asked for."""


class MissingError(StorageError):
    """What we asked storage for is not there (no such file or key): one bad input, where an unreachable server or
    refused credentials stop a stage."""


def storage_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is storage failing the run (unreachable, refused credentials) rather than one input missing
    or broken: a loop that skips bad inputs must re-raise it, or every input would be skipped as bad.

    >>> storage_outage(StorageError("cannot reach bucket 'b'")), storage_outage(MissingError("no such key"))
    (True, False)
    >>> storage_outage(OSError("cannot identify image file"))
    False
    """
    return isinstance(exc, StorageError) and not isinstance(exc, MissingError)


class NotCommittedError(VcotError):
    """An input has no ``_SUCCESS`` manifest: its producer has not finished (or failed)."""


class ConfigError(VcotError):
    """A setting or an input the user chose is wrong and retrying cannot help: an invalid flag, environment variable
    or recipe, settings that can never work together (an output inside an input, the wrong stage's output as
    input). Exit code 2, which the Jobs' ``podFailurePolicy`` fails at once instead of retrying the pod.
    """

    exit_code = 2


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or say which of vcot's extras installs it (:class:`ConfigError`).

    >>> require("json", "core").__name__
    'json'
    >>> require("no_such_module_here", "distill")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    vcot.errors.ConfigError: this needs the no_such_module_here package: make install, or pip install -e '.[distill]'...
    >>> require("no_such_package.parquet", "convert")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    vcot.errors.ConfigError: this needs the no_such_package package: make install, or pip install -e '.[convert]'...
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and module != exc.name and not module.startswith(exc.name + "."):
            raise  # the package is there, but something it imports is not: not a missing extra
        package = module.split(".")[0]
        raise ConfigError(
            f"this needs the {package} package: make install, or pip install -e '.[{extra}]' from the repository root"
        ) from exc


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception in one short line, for a log field: its message's first line, else its type's name.

    >>> first_line(OSError("cannot identify image file\\nmore")), first_line(KeyError())
    ('cannot identify image file', 'KeyError')
    """
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
