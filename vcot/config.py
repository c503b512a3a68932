"""Stage configuration: a dataclass filled from command-line flags, with ``VCOT_<FLAG>`` env fallbacks.

Each field becomes ``--kebab-name``; its environment fallback is ``VCOT_UPPER_NAME`` (what a Kubernetes
ConfigMap sets). Precedence: flag, then environment, then the field default. A value that does not
parse, or that ``__post_init__`` rejects (``ValueError`` or :class:`~vcot.errors.ConfigError`), exits with
code 2 and one line that says what to set::

    @dataclass
    class ConvertConfig:
        output: str = option(help="Where to write the records (s3://bucket/prefix or a local path).")
        num_shards: int = option(1, help="How many pods split the input.")

        def __post_init__(self) -> None:
            if self.num_shards < 1:
                raise ValueError("--num-shards must be at least 1")
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, NoReturn, TypeVar, Union, get_args, get_origin

from vcot.errors import ConfigError

T = TypeVar("T")

REQUIRED: Any = dataclasses.MISSING
_SECRET_WORDS = (
    "key", "keys", "secret", "secrets", "token", "password", "passwd", "credential", "credentials", "sig", "signature"
)
_URL_USERINFO = re.compile(r"(?<=://)[^/?#@\s'\"]+@")
_URL_QUERY_VALUE = re.compile(r"([?&]([\w.-]+)=)([^&#\s'\"]+)")


def option(
    default: Any = REQUIRED,
    *,
    help: str,  # noqa: A002 - mirrors argparse
    secret: bool = False,
) -> Any:
    """A config field with help text. ``secret`` fields are redacted in logs and manifests. Its variable is always
    ``VCOT_<FIELD>`` (:func:`env_name`): a field that must not share another stage's variable gets its own name."""
    metadata = {"help": help, "secret": secret}
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def env_name(field: dataclasses.Field[Any]) -> str:
    """``--some-flag``'s variable, ``VCOT_SOME_FLAG``."""
    return f"VCOT_{field.name.upper()}"


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _convert(raw: str, tp: Any, name: str) -> Any:
    """Parse one string into the annotated type, raising ``ValueError`` with a helpful message."""
    inner, optional = _unwrap_optional(tp)
    if optional and raw.strip().lower() in ("", "none", "null"):
        return None
    if get_origin(inner) is Literal:
        choices = [str(c) for c in get_args(inner)]
        if raw not in choices:
            raise ValueError(f"{name}={raw!r} is not one of {', '.join(choices)}")
        return raw
    if inner is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{name}={raw!r} is not a boolean: use true or false")
    if inner in (int, float):
        try:
            return inner(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a valid {inner.__name__}") from None
    if get_origin(inner) is dict:
        try:
            parsed = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}={raw!r} is not a JSON object ({exc.msg})") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"{name}={raw!r} is not a JSON object: write it as {{\"key\": value}}")
        return parsed
    if get_origin(inner) in (list, tuple):
        item_type = get_args(inner)[0] if get_args(inner) else str
        return [_convert(part.strip(), item_type, name) for part in raw.split(",") if part.strip()]
    return raw


def _type_hints(cls: type) -> dict[str, Any]:
    module = sys.modules.get(cls.__module__)
    return typing.get_type_hints(cls, globalns=vars(module) if module else None)


class _OneLineErrors(argparse.ArgumentParser):
    """An invalid flag or value is one line on stderr and exit code 2 (no usage dump in a pod's log)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists every flag)\n")


def build_parser(cls: type, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    doc_lines = (cls.__doc__ or "").strip().splitlines()
    parser = _OneLineErrors(prog=prog, description=description or (doc_lines[0] if doc_lines else None))
    hints = _type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        flag = "--" + field.name.replace("_", "-")
        inner, _ = _unwrap_optional(hints[field.name])
        help_text = f"{field.metadata.get('help', '')} [env: {env_name(field)}]"
        if field.default is not dataclasses.MISSING:
            help_text += f" (default: {field.default})"
        elif field.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            help_text += " (required)"
        if inner is bool:
            parser.add_argument(flag, dest=field.name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            choices = [str(c) for c in get_args(inner)] if get_origin(inner) is Literal else None
            parser.add_argument(flag, dest=field.name, default=None, choices=choices, help=help_text)
    return parser


def parse_config(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    environ: dict[str, str] | None = None,
) -> T:
    """Build ``cls`` from flags, then ``VCOT_*`` variables, then defaults; exit 2 with a clear message if invalid."""
    environ = dict(os.environ) if environ is None else environ
    parser = build_parser(cls, prog=prog)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    hints = _type_hints(cls)
    values: dict[str, Any] = {}
    try:
        for field in dataclasses.fields(cls):
            if not field.init:
                continue
            flag = "--" + field.name.replace("_", "-")
            given = getattr(args, field.name)
            if given is not None:
                values[field.name] = given if isinstance(given, bool) else _convert(given, hints[field.name], flag)
            elif env_name(field) in environ:
                values[field.name] = _convert(environ[env_name(field)], hints[field.name], env_name(field))
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                raise ValueError(f"{flag} is required: pass it or set {env_name(field)}")
        return cls(**values)
    except (ValueError, TypeError, ConfigError) as exc:
        parser.error(str(exc))


def is_secret_name(name: str) -> bool:
    """A name with a secret-sounding word: ``api_key``, ``AWS_SECRET_ACCESS_KEY``, ``hf_token``; not ``max_tokens``."""
    return any(word in _SECRET_WORDS for word in re.split(r"[_.-]", name.lower()))


def is_secret(field: dataclasses.Field[Any]) -> bool:
    """Marked ``secret``, or a secret-sounding name (:func:`is_secret_name`)."""
    return bool(field.metadata.get("secret")) or is_secret_name(field.name)


def mask_url_credentials(text: str) -> str:
    """Credentials written into URLs (user:password, secret query parameters) replaced by ``***``.

    >>> mask_url_credentials("base https://me:s3cr3t@llm.example/v1?api-key=abc&model=x")
    'base https://***@llm.example/v1?api-key=***&model=x'
    """
    text = _URL_USERINFO.sub("***@", text)
    return _URL_QUERY_VALUE.sub(lambda m: m.group(1) + "***" if is_secret_name(m.group(2)) else m.group(0), text)


def redacted(config: Any) -> dict[str, Any]:
    """The config as a plain dict with secrets replaced by ``"***"`` (safe to log and to store in manifests)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if is_secret(field) and value not in (None, ""):
            value = "***"
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = redacted(value)
        elif isinstance(value, str):
            value = mask_url_credentials(value)
        elif isinstance(value, list):
            value = [mask_url_credentials(item) if isinstance(item, str) else item for item in value]
        out[field.name] = value
    return out


def load_yaml(text: str, what: str) -> Any:
    r"""``text`` parsed as YAML (safe types only), for every YAML file or value vcot reads (recipes, ``--set``
    values, mixtures). A syntax error or a key given twice in one mapping is one :class:`ConfigError` line saying
    where: PyYAML keeps the last of two equal keys, so a duplicated source or knob would silently replace the first.
    Numbers in exponent form are read as YAML 1.2 reads them (:data:`EXPONENT_NUMBER`; PyYAML's YAML 1.1 reads
    ``1e-5`` as a string, which a ``trainer:`` or ``peft:`` value would pass on to the library as one).

    >>> load_yaml("a: 1\nb: {c: 2}", "recipe x")
    {'a': 1, 'b': {'c': 2}}
    >>> load_yaml("trainer: {adam_epsilon: 1e-5, min_lr: .5E3, name: e5, version: '1e5', steps: 10}", "recipe x")
    {'trainer': {'adam_epsilon': 1e-05, 'min_lr': 500.0, 'name': 'e5', 'version': '1e5', 'steps': 10}}
    >>> load_yaml("sources:\n  a: {weight: 1}\n  a: {weight: 2}", "mixture m.yaml")
    Traceback (most recent call last):
    ...
    vcot.errors.ConfigError: mixture m.yaml has the key 'a' twice in one mapping (line 3): remove or rename one
    """
    import yaml

    try:
        return yaml.load(text, Loader=_unique_keys_loader())  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        raise ConfigError(
            f"{what} has the key {dup.key!r} twice in one mapping (line {dup.line}): remove or rename one"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{what} is not valid YAML ({problem}{where}): fix its syntax") from None


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int) -> None:
        self.key, self.line = key, line


EXPONENT_NUMBER = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
"""A number in exponent form (``1e-5``, ``.5e3``, ``1.0E+5``): YAML 1.2 reads it as one, PyYAML's YAML 1.1 only
with a dot and a signed exponent (``1.0e-5``). Quote a string that looks so (a digest like ``123e45``)."""


@functools.cache
def _unique_keys_loader() -> type:
    """A ``yaml.SafeLoader`` that refuses a key given twice in one mapping (merge keys ``<<`` may still be
    overridden: that is what they are for)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        duplicate = key in seen
                        seen.add(key)
                    except TypeError:  # an unhashable key: PyYAML's own error says so
                        continue
                    if duplicate:
                        raise _DuplicateKey(key, key_node.start_mark.line + 1)
            return super().construct_mapping(node, deep=deep)

    UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_NUMBER, list("-+.0123456789"))
    return UniqueKeyLoader

