"""Fuzzed VisCOT input never crashes the stage, and every input item lands in exactly one output."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcot.convert import ConvertConfig, convert
from vcot.dev.synthetic import synthetic_items, write_synthetic_viscot
from vcot.errors import ConfigError
from vcot.io import manifest, shards

BASE = [item for item, _, _, _ in synthetic_items(8, seed=11)]
# Integers stay within 64 bits: yajl (ijson's C backend) refuses larger ones, and -2**63 too (its overflow check, with
# use_float=True), and the stage then stops with a clear error for the whole file (test_convert_pipeline covers that
# path); real datasets never hold them.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63) + 1, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
box_texts = st.one_of(
    st.text(max_size=30),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=6).map(lambda v: str(v)),
    st.lists(st.integers(-5000, 5000), min_size=4, max_size=4).map(str),
)


@st.composite
def mutated_item(draw: st.DrawFn) -> object:
    item = copy.deepcopy(draw(st.sampled_from(BASE)))
    kind = draw(st.sampled_from(["keep", "field", "box", "absolute", "turn", "whole", "drop"]))
    if kind == "field":
        item[draw(st.sampled_from(["image", "conversations", "dataset", "split", "question_id"]))] = draw(json_values)
    elif kind == "box":
        item["conversations"][1]["value"] = draw(box_texts)
    elif kind == "absolute":
        item["image"] = [item["image"][0], f"{item['image'][0]}###{draw(box_texts)}"]
    elif kind == "turn":
        turn = draw(st.integers(0, 3))
        item["conversations"][turn][draw(st.sampled_from(["from", "value"]))] = draw(json_values)
    elif kind == "whole":
        return draw(json_values)
    elif kind == "drop":
        item.pop(draw(st.sampled_from(sorted(item))))
    return item


def _committed(config: ConvertConfig, items: int) -> bool:
    """Run the stage; ``False`` when it refused an input of which no item was accepted (then nothing is committed,
    and the refusal counts every item)."""
    try:
        convert(config)
    except ConfigError as refused:
        assert f"none of the {items} items" in str(refused) and "nothing was committed" in str(refused)
        assert not manifest.is_committed(config.output)
        return False
    return True


def _outputs(output: str) -> tuple[list[dict], list[dict]]:
    accepted = [
        r for p in ("train/", "val/") for uri in manifest.committed_files(output, p) for r in shards.read_jsonl(uri)
    ]
    rejected = [r for uri in manifest.committed_files(output, "rejected/") for r in shards.read_jsonl(uri)]
    return accepted, rejected


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("fuzz") / "data")
    write_synthetic_viscot(root, num_records=8, seed=11)
    return root


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(mutated_item(), min_size=1, max_size=12), st.booleans())
def test_fuzzed_json_array_is_fully_accounted_for(images: str, items: list[object], headers: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "viscot.json"
        data.write_text(json.dumps(items))
        output = f"{tmp}/out"
        config = ConvertConfig(
            source="viscot",
            input=str(data),
            images=f"{images}/images",
            metadata=f"{images}/metadata.jsonl",
            output=output,
            read_image_headers=headers,
        )
        if not _committed(config, len(items)):
            return
        accepted, rejected = _outputs(output)
        assert len(accepted) + len(rejected) == len(items)
        indexes = [r["provenance"]["source_index"] for r in accepted] + [r["source_index"] for r in rejected]
        assert sorted(indexes) == list(range(len(items)))
        assert all(r["reason"] for r in rejected)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(mutated_item().map(lambda i: json.dumps(i).encode()), st.binary(max_size=40)), min_size=1, max_size=10
    )
)
def test_fuzzed_jsonl_lines_are_fully_accounted_for(images: str, lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "viscot.jsonl"
        raw = b"\n".join(lines) + b"\n"
        data.write_bytes(raw)
        expected = sum(1 for line in raw.split(b"\n") if line.strip())
        output = f"{tmp}/out"
        config = ConvertConfig(
            source="viscot",
            input=str(data),
            images=f"{images}/images",
            metadata=f"{images}/metadata.jsonl",
            output=output,
        )
        if not expected:  # only blank lines: no item at all is refused, nothing committed
            with pytest.raises(ConfigError, match="holds no viscot items"):
                convert(config)
            assert not manifest.is_committed(output)
            return
        if not _committed(config, expected):
            return
        accepted, rejected = _outputs(output)
        assert len(accepted) + len(rejected) == expected
