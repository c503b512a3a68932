"""Dataset mixtures: which committed record outputs tokenize reads, how many rows each gives, at what budget.

A mixture file (YAML, ``docs/train.md``)::

    seed: 0
    sources:
      viscot:  {data: s3://vcot/runs/r1/distilled, weight: 1.0}
      receipts: {data: s3://vcot/own/receipts, samples: 20000, max_pixels: 2007040, max_length: 4096}
      input:   {weight: 2}          # the records of --input (how the cluster's run.env mixes its own run in)

Per source, of its *usable* train records (``grounding_problem`` is ``None``): ``weight: w`` gives
``round(w * n)`` rows, ``samples: N`` exactly ``N``. Beyond ``n`` every record repeats ``N // n`` times and a
seeded sample of ``N % n`` records once more; below it, a seeded sample. The sample depends only on the seed,
the source's name and its records, so the same mixture gives the same rows. Val records are each taken once.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from vcot.config import load_yaml
from vcot.errors import ConfigError
from vcot.io import storage

INPUT = "input"
"""The source name that stands for tokenize's ``--input`` records."""
SOURCE_KEYS = ("data", "weight", "samples", "min_pixels", "max_pixels", "max_length")
MIN_PIXELS_FLOOR = 28 * 28


@dataclass(frozen=True)
class MixtureSource:
    """One source of a mixture; ``None`` settings fall back to tokenize's flags."""

    name: str
    data: tuple[str, ...]
    weight: float | None = None
    samples: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    max_length: int | None = None

    @property
    def takes_all_once(self) -> bool:
        """Every usable record once: no counting pass is needed."""
        return self.samples is None and self.weight in (None, 1.0)

    def target(self, usable: int) -> int:
        """How many train rows this source gives from ``usable`` records.

        >>> MixtureSource("a", ("s3://b/a",), weight=2.5).target(10), MixtureSource("a", ("x",), samples=7).target(3)
        (25, 7)
        """
        if self.samples is not None:
            return self.samples if usable else 0
        return round((1.0 if self.weight is None else self.weight) * usable)

    def copies(self, usable: int, seed: int) -> tuple[int, set[int]]:
        """``(copies of every record, usable indexes that get one more)`` for :meth:`target` rows.

        >>> base, extra = MixtureSource("a", ("x",), samples=5).copies(2, seed=0)
        >>> base, len(extra)
        (2, 1)
        """
        if not usable:
            return 0, set()
        base, rest = divmod(self.target(usable), usable)
        rng = random.Random(f"{seed}:{self.name}")  # a str seed is hashed with sha512: the same on every machine
        return base, set(rng.sample(range(usable), rest))


@dataclass(frozen=True)
class Mixture:
    """The resolved mixture tokenize runs and records in its manifest."""

    sources: tuple[MixtureSource, ...]
    seed: int = 0
    uri: str | None = None
    sha256: str | None = None

    @property
    def data(self) -> list[str]:
        """Every record output the mixture reads (tokenize's inputs, for lineage and the overlap check)."""
        return [uri for source in self.sources for uri in source.data]

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "sha256": self.sha256,
            "seed": self.seed,
            "sources": {s.name: {k: v for k, v in asdict(s).items() if k != "name"} for s in self.sources},
        }


def of_inputs(inputs: list[str]) -> Mixture:
    """Plain ``--input``: one source, every record once (what tokenize always did); one output named twice refused.

    >>> of_inputs(["s3://b/a", "s3://b/a/"])
    Traceback (most recent call last):
    ...
    vcot.errors.ConfigError: --input: source 'input' reads s3://b/a, so its val records would count twice: ...
    """
    sources = (MixtureSource(INPUT, tuple(inputs)),)
    check_sources(sources, label="--input")
    return Mixture(sources)


def _number(name: str, key: str, value: Any, kind: type, minimum: float) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"mixture source {name!r}: {key} must be a{'n integer' if kind is int else ' number'}")
    if not math.isfinite(value):
        raise ConfigError(f"mixture source {name!r}: {key}={value} is not a finite number")
    if value < minimum:
        raise ConfigError(f"mixture source {name!r}: {key} must be at least {minimum}")
    return kind(value)


def parse_source(name: str, spec: Any, inputs: list[str]) -> MixtureSource:
    """One ``sources:`` entry, checked: what is wrong is one line that says what to write instead."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"mixture source {name!r} must be a mapping with data and weight or samples")
    unknown = sorted(set(spec) - set(SOURCE_KEYS))
    if unknown:
        raise ConfigError(f"mixture source {name!r}: unknown key(s) {', '.join(unknown)}; use {', '.join(SOURCE_KEYS)}")
    data = spec.get("data")
    if name == INPUT:
        if data is not None:
            raise ConfigError("mixture source 'input' stands for --input's records: give it no data")
        if not inputs:
            raise ConfigError("the mixture's 'input' source takes --input's records: pass --input")
        uris = tuple(inputs)
    else:
        uris = (data,) if isinstance(data, str) else tuple(data) if isinstance(data, list) else ()
        if not uris or not all(isinstance(u, str) and u.strip() for u in uris):
            raise ConfigError(f"mixture source {name!r}: data must be a committed record output URI (or a list)")
    if spec.get("weight") is not None and spec.get("samples") is not None:
        raise ConfigError(f"mixture source {name!r}: give weight or samples, not both")
    source = MixtureSource(
        name,
        uris,
        weight=_number(name, "weight", spec.get("weight"), float, 0),
        samples=_number(name, "samples", spec.get("samples"), int, 0),
        min_pixels=_number(name, "min_pixels", spec.get("min_pixels"), int, MIN_PIXELS_FLOOR),
        max_pixels=_number(name, "max_pixels", spec.get("max_pixels"), int, MIN_PIXELS_FLOOR),
        max_length=_number(name, "max_length", spec.get("max_length"), int, 16),
    )
    if source.min_pixels and source.max_pixels and source.min_pixels > source.max_pixels:
        raise ConfigError(f"mixture source {name!r}: min_pixels must not exceed max_pixels")
    return source


def check_sources(sources: tuple[MixtureSource, ...], uri: str | None = None, *, label: str = "") -> None:
    """What no single source shows: a record output read twice (its val records would count twice in
    ``eval_loss``, its train records get two weights), and a mixture that selects no train row at all."""
    label = label or (f"mixture {uri}" if uri else "the mixture")
    owner: dict[str, str] = {}
    for source in sources:
        named = [storage.place(data) for data in source.data]  # S3:// or s3://, a trailing /, relative or absolute
        for data, place in zip(source.data, named):
            first = owner.setdefault(place, source.name)
            if first != source.name or named.count(place) > 1:
                who = f"source {first!r} reads" if first == source.name else f"sources {first!r} and {source.name!r} both read"
                raise ConfigError(
                    f"{label}: {who} {data}, so its val records would count twice: name each record output once "
                    "(one source, with the weight or samples you want; --input's records are the 'input' source)"
                )
    if all(source.samples == 0 or source.weight == 0 for source in sources):
        raise ConfigError(
            f"{label} selects nothing: every source has weight 0 or samples 0; give one a positive weight or samples"
        )


def parse_mixture(text: str, inputs: list[str], uri: str | None = None) -> Mixture:
    """A mixture file's text, checked. ``inputs``: tokenize's ``--input``, which only an ``input`` source may take.

    >>> parse_mixture("sources: {a: {data: s3://b/a, samples: 5}}", []).sources[0].samples
    5
    """
    document = load_yaml(text, f"mixture {uri or ''}".rstrip())
    if not isinstance(document, Mapping) or not isinstance(document.get("sources"), Mapping) or not document["sources"]:
        raise ConfigError(f"mixture {uri or ''} needs a 'sources:' mapping of name -> {{data, weight or samples}}")
    unknown = sorted(set(document) - {"seed", "sources"})
    if unknown:
        raise ConfigError(f"mixture {uri or ''}: unknown key(s) {', '.join(unknown)}; use seed and sources")
    seed = document.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"mixture {uri or ''}: seed must be an integer")
    sources = tuple(parse_source(str(name), spec, inputs) for name, spec in document["sources"].items())
    check_sources(sources, uri)
    if inputs and INPUT not in {source.name for source in sources}:
        raise ConfigError(
            "--input was given but the mixture has no 'input' source: add 'input: {weight: 1}' under sources "
            "(or drop --input)"
        )
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Mixture(sources, seed=seed, uri=uri, sha256=digest)


def load_mixture(uri: str, inputs: list[str]) -> Mixture:
    """The mixture file at ``uri`` (a local path or ``s3://``), checked."""
    if not storage.exists(uri):
        raise ConfigError(f"mixture file {uri} does not exist: check --mixture")
    return parse_mixture(storage.read_text(uri), inputs, uri)
