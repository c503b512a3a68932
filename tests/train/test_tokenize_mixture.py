"""Dataset mixtures at tokenize: per-source counts, determinism for a seed, per-source budgets and lengths, errors."""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transformers import AutoProcessor

from jobs.tokenize import main as tokenize_main
from tests.k8s.test_k8s_manifests import by_kind, render
from vcot.config import parse_config
from vcot.errors import ConfigError
from vcot.grounding.records import grounding_problem
from vcot.io import manifest
from vcot.tokenize import TokenizeConfig, tokenize
from vcot.tokenize.mixture import parse_mixture
from vcot.train.data import Collator


def _train_rows(output: str) -> list[dict]:
    files = manifest.read_committed(output, "train/")
    return [row for _, data in files for row in pq.read_table(io.BytesIO(data)).to_pylist()]


def _usable_train(records_uri: str) -> int:
    records = manifest.committed_records(records_uri, ("train/",))
    return sum(1 for r in records if grounding_problem(r) is None)


def _tokenize(mixture: Path, output: Path, model: Path, **flags: object) -> dict:
    tokenize(TokenizeConfig(mixture=str(mixture), output=str(output), model=str(model), **flags))
    return manifest.read_manifest(str(output))


def test_weights_and_sample_counts_give_those_rows_the_same_for_a_seed(
    record_output: Callable[..., str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    a = record_output(24, seed=0, root=str(tmp_path / "a"))
    b = record_output(10, seed=1, unusable=3, root=str(tmp_path / "b"))
    n_a, n_b = _usable_train(a), _usable_train(b)
    text = f"seed: 7\nsources:\n  a: {{data: {a}, weight: 0.5}}\n  b: {{data: {b}, samples: 25}}\n"
    (tmp_path / "mix.yaml").write_text(text)
    (tmp_path / "mix8.yaml").write_text(text.replace("seed: 7", "seed: 8"))

    first = _tokenize(tmp_path / "mix.yaml", tmp_path / "t1", tiny_model_dir)
    stats = first["stats"]["mixture"]
    assert stats["a"]["train"] == {"usable": n_a, "selected": round(n_a / 2), "rows": round(n_a / 2), "skipped": {}}
    assert stats["b"]["train"]["usable"] == n_b and stats["b"]["train"]["rows"] == 25
    unusable_b = sum(1 for r in manifest.committed_records(b, ("train/",)) if not r["rationale"])
    assert stats["b"]["train"]["skipped"] == {"no_rationale": unusable_b} and unusable_b > 0
    assert first["stats"]["train"]["rows"] == round(n_a / 2) + 25
    assert first["config"]["mixture"]["seed"] == 7 and first["config"]["mixture"]["sources"]["b"]["samples"] == 25
    assert first["config"]["mixture"]["sha256"] and [i["uri"] for i in first["inputs"]] == [a, b]

    rows = _train_rows(str(tmp_path / "t1"))
    per_image = Counter(row["image"] for row in rows)
    from_a = [image for image in per_image if image.startswith(a)]
    from_b = [image for image in per_image if image.startswith(b)]
    assert len(from_a) == round(n_a / 2) and all(per_image[i] == 1 for i in from_a)  # half of a, once each
    base, extra = divmod(25, n_b)  # b oversampled: every record base times, extra of them once more
    assert len(from_b) == n_b and sorted(per_image[i] for i in from_b) == [base] * (n_b - extra) + [base + 1] * extra
    val = first["stats"]["mixture"]["a"]["val"]
    assert val["rows"] == val["usable"] > 0  # val records are each taken once

    again = _tokenize(tmp_path / "mix.yaml", tmp_path / "t2", tiny_model_dir)
    assert [f["sha256"] for f in again["files"]] == [f["sha256"] for f in first["files"]]
    _tokenize(tmp_path / "mix8.yaml", tmp_path / "t3", tiny_model_dir)
    other = _train_rows(str(tmp_path / "t3"))
    assert [r["image"] for r in other] != [r["image"] for r in rows] and len(other) == len(rows)


def test_a_mixture_file_edited_in_place_is_another_run_of_a_sharded_tokenize(
    record_output: Callable[..., str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The default run id hashed the file's path only: after an edit, one pod's --overwrite rerun completed the set
    with the other pod's shard of the old weights, under a _SUCCESS that named the new ones."""
    a = record_output(24, seed=0, root=str(tmp_path / "a"))
    mix, output = tmp_path / "mix.yaml", tmp_path / "tok"
    mix.write_text(f"sources:\n  a: {{data: {a}, weight: 1}}\n")

    def pod(index: int, **flags: object) -> None:
        tokenize(TokenizeConfig(mixture=str(mix), output=str(output), model=str(tiny_model_dir), shard_index=index,
                                num_shards=2, **flags))  # fmt: skip

    pod(0), pod(1)
    assert manifest.read_manifest(str(output))["config"]["mixture"]["sources"]["a"]["weight"] == 1
    mix.write_text(f"sources:\n  a: {{data: {a}, weight: 3}}\n")
    pod(0, overwrite=True)
    assert not manifest.is_committed(str(output))  # shard 1 is still of the old weights
    pod(1, overwrite=True)
    assert manifest.read_manifest(str(output))["config"]["mixture"]["sources"]["a"]["weight"] == 3


def test_a_source_s_own_pixel_budget_and_length_limit(
    record_output: Callable[..., str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    small = record_output(12, seed=0, root=str(tmp_path / "small"))
    large = record_output(12, seed=1, root=str(tmp_path / "large"))
    other = record_output(12, seed=2, root=str(tmp_path / "other"))  # a record output is named once per mixture
    (tmp_path / "mix.yaml").write_text(
        f"sources:\n  small: {{data: {small}}}\n  large: {{data: {large}, max_pixels: 50176}}\n"
        f"  short: {{data: {other}, max_length: 16}}\n"
    )
    found = _tokenize(tmp_path / "mix.yaml", tmp_path / "tokens", tiny_model_dir)
    assert found["config"]["model_format"]["vision"]["max_pixels"] == 112 * 112  # the format keeps the model's budget
    short = found["stats"]["mixture"]["short"]["train"]
    assert short["rows"] == 0 and short["skipped"] == {"too_long": short["usable"]} and short["usable"] > 0
    rows = _train_rows(str(tmp_path / "tokens"))
    default = [r for r in rows if r["image"].startswith(small)]
    own = [r for r in rows if r["image"].startswith(large)]
    assert {(r["min_pixels"], r["max_pixels"]) for r in default} == {(None, None)}
    assert {(r["min_pixels"], r["max_pixels"]) for r in own} == {(56 * 56, 50176)}
    assert max(r["image_grid_thw"][1] * r["image_grid_thw"][2] for r in own) > 64  # beyond the default 8x8 patches

    # the collator resizes each row with its own budget: the grids it gets are the ones tokenize counted
    collator = Collator(AutoProcessor.from_pretrained(tiny_model_dir))
    batch = collator([default[0], own[0], own[1], default[1]])
    grids = [r["image_grid_thw"] for r in (default[0], own[0], own[1], default[1])]
    assert batch["image_grid_thw"].tolist() == grids
    assert batch["pixel_values"].shape[0] == sum(t * h * w for t, h, w in grids)


@pytest.mark.parametrize(
    ("text", "inputs", "message"),
    [
        ("sources: {a: {data: s3://b/a, weight: 1, samples: 3}}", [], "weight or samples, not both"),
        ("sources: {a: {data: s3://b/a, wieght: 1}}", [], "unknown key(s) wieght"),
        ("sources: {a: {data: s3://b/a, samples: -1}}", [], "samples must be at least 0"),
        ("sources: {a: {data: s3://b/a, min_pixels: 9000, max_pixels: 4000}}", [], "min_pixels must not exceed"),
        ("sources: {input: {weight: 2}}", [], "pass --input"),
        ("sources: {a: {data: s3://b/a}}", ["s3://b/run/distilled"], "add 'input: {weight: 1}'"),
        ("sources: [a, b]", [], "needs a 'sources:' mapping"),
        ("sources: {a: {weight: 1}}", [], "data must be a committed record output"),
        ("sources: {a: {data: s3://b/a, weight: .nan}}", [], "weight=nan is not a finite number"),
        ("sources: {a: {data: s3://b/a, weight: .inf}}", [], "weight=inf is not a finite number"),
        ("sources: {a: {data: s3://b/a, weight: -.inf}}", [], "weight=-inf is not a finite number"),
        ("sources:\n  a: {data: s3://b/a}\n  a: {data: s3://b/c}\n", [], "has the key 'a' twice in one mapping (line 3)"),
        ("sources: {a: {data: s3://b/a, weight: 1, weight: 2}}", [], "has the key 'weight' twice"),
        ("seed: 1\nseed: 2\nsources: {a: {data: s3://b/a}}", [], "has the key 'seed' twice"),
        ("sources: {a: {data: s3://b/a}, b: {data: s3://b/a/, weight: 2}}", [], "sources 'a' and 'b' both read s3://b/a/"),
        ("sources: {a: {data: [s3://b/a, s3://b/a]}}", [], "source 'a' reads s3://b/a, so its val records"),
        ("sources: {a: {data: [s3://b/a, s3://b/a/]}}", [], "source 'a' reads s3://b/a, so its val records"),
        ("sources: {a: {data: [s3://b/a, S3://b/a]}}", [], "source 'a' reads s3://b/a, so its val records"),
        ("sources: {a: {data: /data/a}, b: {data: 'file:///data//a'}}", [], "sources 'a' and 'b' both read"),
        ("sources: {a: {data: [/data/a, /data/./a]}}", [], "source 'a' reads /data/a, so its val records"),
        ("sources: {input: {}, a: {data: s3://b/r/d}}", ["s3://b/r/d"], "sources 'input' and 'a' both read"),
        ("sources: {a: {data: s3://b/a, weight: 0}, b: {data: s3://b/b, samples: 0}}", [], "selects nothing"),
    ],
)
def test_a_mixture_file_that_is_wrong_says_what_to_write(text: str, inputs: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        parse_mixture(text, inputs)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ("  a: {data: A, weight: .inf}\n", "weight=inf is not a finite number"),
        ("  a: {data: A, weight: .nan}\n", "weight=nan is not a finite number"),
        ("  a: {data: A, weight: 0}\n  b: {data: B, samples: 0}\n", "selects nothing"),
        ("  a: {data: A}\n  b: {data: A, weight: 2}\n", "sources 'a' and 'b' both read"),
        ("  a: {data: A}\n  a: {data: B, weight: 2}\n", "has the key 'a' twice"),
    ],
)
def test_a_wrong_mixture_exits_2_before_anything_is_read_or_written(
    sources: str, message: str, record_output: Callable[..., str], tiny_model_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The issue's cases on real records: an infinite weight crashed after reading them (exit 1), all-zero weights
    read everything and failed with "no usable records" (exit 1), the same data twice doubled the val split and a
    duplicated source silently dropped one (both committed, exit 0)."""
    a, b = record_output(12, seed=0, root=str(tmp_path / "a")), record_output(12, seed=1, root=str(tmp_path / "b"))
    (tmp_path / "mix.yaml").write_text("sources:\n" + sources.replace("A", a).replace("B", b))
    output = tmp_path / "out"
    argv = ["--mixture", str(tmp_path / "mix.yaml"), "--output", str(output), "--model", str(tiny_model_dir)]
    assert tokenize_main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vcot-tokenize: error:")]
    assert len(lines) == 1 and message in lines[0], lines
    assert not output.exists()


def test_a_source_budget_the_processor_cannot_take_fails_before_overwrite_deletes_anything(
    record_output: Callable[..., str], tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in a source's max_pixels (below the processor's min_pixels) is only seen with the processor: it must
    fail before the output is claimed, so --overwrite of a committed output does not delete it first."""
    a = record_output(12, seed=0, root=str(tmp_path / "a"))
    output = tmp_path / "tokens"
    (tmp_path / "good.yaml").write_text(f"sources:\n  a: {{data: {a}}}\n")
    committed = _tokenize(tmp_path / "good.yaml", output, tiny_model_dir)
    (tmp_path / "typo.yaml").write_text(f"sources:\n  a: {{data: {a}, max_pixels: 1000}}\n")  # meant 10000
    argv = ["--mixture", str(tmp_path / "typo.yaml"), "--output", str(output), "--model", str(tiny_model_dir)]
    assert tokenize_main([*argv, "--overwrite"]) == 2
    assert "mixture source 'a'" in capsys.readouterr().err
    assert manifest.read_manifest(str(output)) == committed  # still there, untouched


def test_the_input_source_takes_tokenize_s_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mixture = parse_mixture("seed: 3\nsources:\n  input: {weight: 2}\n  own: {data: s3://b/own}\n", ["s3://b/r/d"])
    found = [(s.name, s.data, s.weight) for s in mixture.sources]
    assert found == [("input", ("s3://b/r/d",), 2.0), ("own", ("s3://b/own",), None)]
    (tmp_path / "bad.yaml").write_text("sources: {a: {data: s3://b/a, samples: 2.5}}\n")
    argv = ["--mixture", str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "out"), "--model", str(tmp_path)]
    assert tokenize_main(argv) == 2
    assert "samples must be an integer" in capsys.readouterr().err


def test_the_cluster_tokenize_job_takes_a_mixture_from_run_env() -> None:
    docs = render("k8s/base")
    (config_map,) = by_kind(docs, "ConfigMap").values()
    args = by_kind(docs, "Job")["vcot-tokenize"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--mixture=$(TOKENIZE_MIXTURE)" in args and config_map["data"]["TOKENIZE_MIXTURE"] == ""
    # Kubernetes expands the empty value to "--mixture=": no mixture, the run's --input alone
    argv = ["--input=s3://b/r/distilled", "--output=s3://b/r/tokenized", "--model=s3://m", "--mixture="]
    assert parse_config(TokenizeConfig, argv, environ={}).mixture is None
