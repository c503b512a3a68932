"""Tokenize: exact image token counts, assistant-only labels, Parquet shards and their manifest."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import AutoProcessor

from jobs.tokenize import main as tokenize_main
from tests.conftest import LogMode
from vcot.config import parse_config
from vcot.errors import ConfigError
from vcot.grounding.boxes import parse_grounded, smart_resize
from vcot.grounding.model_format import ModelFormat
from vcot.io import manifest, storage
from vcot.tokenize import IGNORE_INDEX, Encoder, TokenizeConfig, tokenize


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("pixels", [(56 * 56, 112 * 112), (28 * 28, 28 * 28 * 40), (56 * 56, 28 * 28 * 1280)])
def test_image_token_count_equals_the_processors(processor, pixels: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    min_pixels, max_pixels = pixels
    processor.image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    vision = ModelFormat.for_processor(processor, "qwen2.5-vl").vision
    rng = random.Random(0)
    sizes = [(1, 1), (28, 28), (640, 480), (31, 1000), (1000, 31), (113, 57)] + [
        (rng.randint(10, 1200), rng.randint(10, 1200)) for _ in range(10)
    ]
    for width, height in sizes:
        out = processor(text=["<|image_pad|>"], images=[Image.new("RGB", (width, height))], return_tensors="pt")
        assert list(out["image_grid_thw"][0]) == list(vision.grid(width, height)), (width, height)
        assert int((out["input_ids"] == processor.image_token_id).sum()) == vision.image_tokens(width, height)


@pytest.fixture(scope="module")
def family_processors() -> dict:
    from vcot.dev.tiny_model import build_processor

    return {family: build_processor(family=family) for family in ("qwen2.5-vl", "qwen3-vl")}


# Per family: the tiny budget, the released checkpoint's default (preprocessor_config.json) and one in between.
BUDGETS = {
    "qwen2.5-vl": [(56 * 56, 112 * 112), (3136, 12845056), (28 * 28 * 4, 28 * 28 * 256)],
    "qwen3-vl": [(64 * 64, 128 * 128), (65536, 16777216), (32 * 32 * 4, 32 * 32 * 256)],
}


def formula_image_tokens(width: int, height: int, patch: int, min_pixels: int, max_pixels: int) -> int:
    """Image tokens by the pure formula: smart_resize to multiples of 2 * patch, then (h / patch) * (w / patch) / 4."""
    resized_h, resized_w = smart_resize(height, width, factor=2 * patch, min_pixels=min_pixels, max_pixels=max_pixels)
    return (resized_h // patch) * (resized_w // patch) // 4


@settings(max_examples=100)
@given(
    family=st.sampled_from(["qwen2.5-vl", "qwen3-vl"]),
    width=st.integers(1, 1200),
    height=st.integers(1, 1200),
    budget=st.integers(0, 2),
)
def test_image_token_count_is_the_formula_for_both_families(
    family_processors: dict, family: str, width: int, height: int, budget: int
) -> None:
    assume(max(width, height) / min(width, height) <= 200)
    processor = family_processors[family]
    min_pixels, max_pixels = BUDGETS[family][budget]
    processor.image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    patch = {"qwen2.5-vl": 14, "qwen3-vl": 16}[family]
    expected = formula_image_tokens(width, height, patch, min_pixels, max_pixels)

    out = processor(text=["<|image_pad|>"], images=[Image.new("RGB", (width, height))], return_tensors="pt")
    assert int((out["input_ids"] == processor.image_token_id).sum()) == expected
    vision = ModelFormat.for_processor(processor, family).vision  # what tokenize counts
    assert list(out["image_grid_thw"][0]) == list(vision.grid(width, height))
    assert vision.image_tokens(width, height) == expected


def test_prompt_ids_equal_the_processors_and_labels_cover_exactly_the_assistant_turn(
    tiny_model_dir: Path, one_record: Callable[..., dict]
) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    encoder = Encoder(processor, ModelFormat.for_processor(processor, "qwen2.5-vl"))
    record = one_record(3, 1)
    row = encoder.encode(record)

    prompt, assistant = encoder.chat_texts(record)
    with storage.open_uri(record["image"], "rb") as handle:
        image = Image.open(handle).convert("RGB")
    expected = processor(text=[prompt], images=[image], return_tensors="pt")
    prompt_length = expected["input_ids"].shape[1]
    assert row["input_ids"][:prompt_length] == expected["input_ids"][0].tolist()
    assert row["image_grid_thw"] == expected["image_grid_thw"][0].tolist()

    labels = row["labels"]
    assert labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert IGNORE_INDEX not in labels[prompt_length:] and len(labels) == len(row["input_ids"])
    assert labels[prompt_length:] == row["input_ids"][prompt_length:]
    assert processor.tokenizer.decode(labels[prompt_length:]) == record["rationale"] + "<|im_end|>\n"
    assert assistant == record["rationale"] + "<|im_end|>\n"


def test_qwen25_absolute_targets_and_text_mode(tiny_model_dir: Path, one_record: Callable[..., dict]) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    fmt = ModelFormat.for_processor(processor, "qwen2.5-vl", coords="qwen2.5-absolute")
    vision = fmt.vision
    record = one_record(2, 2)  # 90 x 200 px

    row = Encoder(processor, fmt).encode(record)
    target = processor.tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX])
    resized_h, resized_w = smart_resize(200, 90, min_pixels=vision.min_pixels, max_pixels=vision.max_pixels)
    x1, y1, x2, y2 = record["objects"][0]["box"]
    assert parse_grounded(target).boxes[0].box == tuple(
        round(v) for v in (x1 * resized_w / 1000, y1 * resized_h / 1000, x2 * resized_w / 1000, y2 * resized_h / 1000)
    )

    text_row = Encoder(processor, ModelFormat.for_processor(processor, "qwen2.5-vl", mode="text")).encode(record)
    assert text_row["image"] is None and text_row["image_grid_thw"] is None
    assert processor.image_token_id not in text_row["input_ids"]
    assert "<|vision_start|>" not in processor.tokenizer.decode(text_row["input_ids"])


def _read_rows(output: str, split: str) -> list[dict]:
    rows: list[dict] = []
    for uri in manifest.committed_files(output, f"{split}/"):
        with storage.open_uri(uri, "rb") as handle:
            rows.extend(pq.read_table(handle).to_pylist())
    return rows


def test_stage_writes_shards_stats_and_skips_reruns(
    tiny_model_dir: Path, record_output: Callable[..., str], tmp_path: Path
) -> None:
    records = record_output(24, unusable=2)
    output = str(tmp_path / "tokens")
    config = TokenizeConfig(input=[records], output=output, model=str(tiny_model_dir), max_length=4096)
    committed = tokenize(config)
    assert committed is not None
    rows = _read_rows(output, "train") + _read_rows(output, "val")
    assert len(rows) == 22 and committed["stats"]["skipped"] == {"no_rationale": 2}
    assert all(r["image"].startswith(records) and len(r["image_grid_thw"]) == 3 for r in rows)
    stats = committed["stats"]["train"]
    assert sum(stats["length_histogram"].values()) == stats["rows"] == len(_read_rows(output, "train"))
    settings = manifest.read_manifest(output)["config"]
    assert settings["model"] == str(tiny_model_dir)
    assert ModelFormat.from_dict(settings) == ModelFormat.for_family(
        "qwen2.5-vl", min_pixels=56 * 56, max_pixels=112 * 112
    )
    assert manifest.read_manifest(output)["inputs"][0]["uri"] == records

    assert tokenize(config) is None  # committed: a rerun is a no-op
    # Over-long rows are dropped and counted, never truncated.
    shortest = min(r["length"] for r in rows)
    config.max_length, config.overwrite = shortest, True
    redone = tokenize(config)
    assert redone is not None
    kept = _read_rows(output, "train") + _read_rows(output, "val")
    assert kept and all(r["length"] == shortest for r in kept)
    assert redone["stats"]["skipped"]["too_long"] == 22 - len(kept)


def test_cli_on_s3_and_bad_flags(tiny_model_dir: Path, record_output: Callable[..., str], s3_bucket: str) -> None:
    records = record_output(8, root=f"{s3_bucket}/records")
    output = f"{s3_bucket}/tokens"
    argv = ["--input", records, "--output", output, "--model", str(tiny_model_dir), "--mode", "text"]
    assert tokenize_main(argv) == 0
    rows = _read_rows(output, "train")
    assert rows and all(r["image"] is None for r in rows)
    assert manifest.read_manifest(output)["config"]["mode"] == "text"
    with pytest.raises(SystemExit) as exit_info:
        tokenize_main([*argv, "--mode", "video"])
    assert exit_info.value.code == 2


def test_comma_separated_inputs_arrive_as_a_list() -> None:
    """vcot.config splits ``list[str]`` options on commas, from a flag and from the environment alike."""
    flags = ["--input", "s3://b/a, s3://b/c", "--output", "o", "--model", "m"]
    assert parse_config(TokenizeConfig, flags, environ={}).input == ["s3://b/a", "s3://b/c"]
    from_env = parse_config(TokenizeConfig, ["--output", "o", "--model", "m"], environ={"VCOT_INPUT": "x,y"})
    assert from_env.input == ["x", "y"]


def test_shard_index_defaults_to_the_indexed_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
    assert TokenizeConfig(input=["in"], output="out", model="m", num_shards=4).shard.name == "00003-of-00004"
    assert TokenizeConfig(input=["in"], output="out", model="m", shard_index=1, num_shards=4).shard_index == 1
    with pytest.raises(ValueError, match="--shard-index"):
        TokenizeConfig(input=["in"], output="out", model="m", num_shards=2)  # index 3 of 2
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    assert TokenizeConfig(input=["in"], output="out", model="m").shard_index == 0


def test_sharded_pods_split_the_records_and_commit_together(
    tiny_model_dir: Path, record_output: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = record_output(20)
    output = str(tmp_path / "tokens")
    for index in range(2):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))  # each pod of an Indexed Job
        config = TokenizeConfig(input=[records], output=output, model=str(tiny_model_dir), num_shards=2)
        assert tokenize(config) is not None
        assert manifest.is_committed(output) == (index == 1)  # _SUCCESS once both shards are in
    rows = _read_rows(output, "train") + _read_rows(output, "val")
    assert len(rows) == 20 and len({r["id"] for r in rows}) == 20
    assert {f["path"] for f in manifest.read_manifest(output)["files"]} == {
        f"{split}/{shard}-of-00002.parquet" for split in ("train", "val") for shard in ("00000", "00001")
    }


def test_inputs_and_outputs_of_the_wrong_stage_are_refused_before_any_work(
    record_output: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tokenize output as input: one line naming it (not a decode error); a convert output as output:
    never taken as already done (exit 0 having done nothing) nor replaced."""
    records = record_output(4)
    tokens = str(tmp_path / "tokens")
    manifest.commit(tokens, stage="tokenize", files=[], config={})
    model = str(tmp_path / "no-model")  # never loaded: the refusals come first
    assert tokenize_main(["--input", tokens, "--output", str(tmp_path / "out"), "--model", model]) == 2
    assert f"{tokens} is a tokenize output; expected records (a convert or distill output)" in capsys.readouterr().err
    other = record_output(4, seed=1)
    for extra in ([], ["--overwrite"]):
        assert tokenize_main(["--input", records, "--output", other, "--model", model, *extra]) == 2
        assert f"--output {other} holds a committed convert output" in capsys.readouterr().err
    assert manifest.read_manifest(other)["stage"] == "convert" and len(list(manifest.committed_records(other))) == 4


def test_rationale_turn_layout_trains_the_analyzer_turn_and_the_answer_turn(
    tiny_model_dir: Path, one_record: Callable[..., dict]
) -> None:
    """LaCoT's layout (what RGFN starts from): the rationale in an Analyzer turn of its own, the answer after it."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    fmt = replace(ModelFormat.for_processor(processor, "qwen2.5-vl"), layout="rationale_turn")
    record = one_record(3, 1)
    prompt, turns = Encoder(processor, fmt).chat_texts(record)
    reasoning, _, answer = record["rationale"].rpartition("Answer:")
    assert prompt.endswith("<|im_start|>user\n" + prompt.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
                           + "<|im_end|>\n<|im_start|>Analyzer\n")
    assert turns == f"{reasoning.strip()}<|im_end|>\n<|im_start|>assistant\nAnswer: {answer.strip()}<|im_end|>\n"
    row = Encoder(processor, fmt).encode(record)
    labelled = [t for t in row["labels"] if t != IGNORE_INDEX]
    assert processor.tokenizer.decode(labelled) == turns
    assert ModelFormat.from_dict(fmt.to_dict()).layout == "rationale_turn"
    stored = fmt.to_dict()
    del stored["layout"]  # a format stored before layouts existed reads as two turns
    assert ModelFormat.from_dict(stored).layout == "two_turn"


def test_tokenize_shows_its_progress_in_both_log_formats(
    log_mode: LogMode, tiny_model_dir: Path, record_output: Callable[..., str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Records read per split against the count its input manifests hold: a bar with the rate and the time left on a
    console, lines with step, total and eta_s in JSON."""
    records = record_output(12)
    counts = {split: len(list(manifest.committed_records(records, (f"{split}/",)))) for split in ("train", "val")}
    argv = ["--input", records, "--output", str(tmp_path / "tokens"), "--model", str(tiny_model_dir)]
    assert tokenize_main(argv) == 0
    err = capsys.readouterr().err
    if log_mode.fmt == "console":
        for split, count in counts.items():
            done = rf"{count}/{count} \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(record/s|s/record)\]"
            assert any(re.search(done, bar) for bar in LogMode.bars(err, "tokenize_progress")), (split, err[-1500:])
        return
    lines = LogMode.lines(err, "tokenize_progress")
    for split, count in counts.items():
        mine = [line for line in lines if line["split"] == split and not line.get("done")]
        assert [line["step"] for line in mine] == list(range(1, count + 1))
        assert all(line["total"] == count and line["eta_s"] is not None for line in mine) and mine[-1]["eta_s"] == 0


def test_rationale_turn_on_a_template_without_the_analyzer_turn_is_one_line(
    tiny_qwen3vl_dir: Path, record_output: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Qwen3-VL's official template drops an Analyzer turn: said at once (exit 2, nothing written), not as one
    encode_error per record and "no usable training row"."""
    records = record_output(4)
    output = tmp_path / "tokens"
    argv = ["--input", records, "--output", str(output), "--model", str(tiny_qwen3vl_dir), "--layout", "rationale_turn"]
    assert tokenize_main(argv) == 2
    err = capsys.readouterr().err
    assert "--layout rationale_turn needs a model whose chat template renders an Analyzer turn" in err
    assert "encode_error" not in err and not output.exists()


def test_a_record_whose_image_is_over_the_decompression_bomb_limit_gives_no_row(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Its size came from metadata (a convert older than the image_too_large check, or another tool): train's
    collator could never load it, so tokenize skips it and counts why. Text mode has no image to load."""
    from tests.convert.own_data import bomb_png
    from tests.train.conftest import make_record
    from vcot.io import shards

    rng = random.Random(0)
    records = [make_record(i, str(tmp_path / "images"), rng) for i in range(6)]
    (tmp_path / "images" / "huge.png").write_bytes(bomb_png())
    records[0].update(image=str(tmp_path / "images" / "huge.png"), width=20_000, height=20_000, split="train")
    data = str(tmp_path / "records")
    manifest.commit(data, stage="convert", config={}, files=[
        shards.write_jsonl(data, f"{split}/00000-of-00001.jsonl.gz", [r for r in records if r["split"] == split])
        for split in ("train", "val")
    ])
    committed = tokenize(TokenizeConfig(input=[data], output=str(tmp_path / "tokens"), model=str(tiny_model_dir)))
    assert committed is not None and committed["stats"]["skipped"] == {"image_too_large": 1}
    rows = _read_rows(str(tmp_path / "tokens"), "train") + _read_rows(str(tmp_path / "tokens"), "val")
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in records[1:])
    text = tokenize(TokenizeConfig(input=[data], output=str(tmp_path / "text"), model=str(tiny_model_dir), mode="text"))
    assert text is not None and text["stats"]["skipped"] == {}


def _train_records(root: Path, usable: list[bool]) -> str:
    """A committed record output whose train split holds one record per entry of ``usable``, in that order."""
    from tests.train.conftest import make_record
    from vcot.io import shards

    rng = random.Random(0)
    records = [make_record(i, str(root / "images"), rng) for i in range(len(usable))]
    for record, ok in zip(records, usable):
        record.update(split="train", rationale=record["rationale"] if ok else "")
    data = str(root / "records")
    manifest.commit(data, stage="convert", config={}, files=[
        shards.write_jsonl(data, "train/00000-of-00001.jsonl.gz", records),
        shards.write_jsonl(data, "val/00000-of-00001.jsonl.gz", []),
    ])
    return data


def test_no_usable_training_row_is_never_committed(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 in one line with the skip reasons (it was exit 1, which the Job retried for nothing)."""
    data = _train_records(tmp_path, [False] * 3)
    output = str(tmp_path / "tokens")
    assert tokenize_main(["--input", data, "--output", output, "--model", str(tiny_model_dir)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vcot-tokenize: error:")]
    assert len(errors) == 1 and f"no usable training row in {data}, of 3 train records: no_rationale 3" in errors[0]
    assert not manifest.is_committed(output) and not storage.list_uris(output)


def test_a_shard_without_a_row_is_refused_one_dealt_no_record_commits(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Round-robin: of [unusable, usable], shard 0 of 2 gets the unusable record (refused), shard 1 the usable one.
    Of a single record, shard 1 is dealt nothing: it commits its empty part so that the set completes."""
    data = _train_records(tmp_path / "two", [False, True])
    output = str(tmp_path / "tokens")
    config = TokenizeConfig(input=[data], output=output, model=str(tiny_model_dir), num_shards=2, shard_index=0)
    with pytest.raises(ConfigError, match=r"\(shard 0 of 2\), of 1 train records: no_rationale 1"):
        tokenize(config)
    assert tokenize(replace(config, shard_index=1)) is not None and not manifest.is_committed(output)

    one = _train_records(tmp_path / "one", [True])
    small = str(tmp_path / "small")
    for index in (1, 0):
        tokenize(TokenizeConfig(input=[one], output=small, model=str(tiny_model_dir), num_shards=2, shard_index=index))
    assert manifest.is_committed(small) and len(_read_rows(small, "train")) == 1
