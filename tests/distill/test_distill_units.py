"""The distill stage's pure pieces: validation, request keys, retry timing, cache, ledger, crops, config."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import vcot.llm.cache
from tests.conftest import moved_clock
from tests.distill.distill_helpers import commit_input, fast_config, make_record
from vcot.distill import distill, prompts
from vcot.distill.config import DistillConfig
from vcot.distill.stage import in_order
from vcot.distill.validate import accepted_record, check_answer
from vcot.io import manifest, shards, storage
from vcot.llm.cache import AnswerCache, request_key
from vcot.llm.chat import CachedChat, Completion, RetryPolicy, retry_after_seconds
from vcot.llm.ledger import Ledger

GOOD = "The <ref>cup</ref><box>[10, 20, 300, 400]</box> is blue.\nAnswer: blue"


@pytest.mark.parametrize(
    ("text", "record", "problem"),
    [
        (GOOD, {"answer": "blue"}, None),
        (GOOD.replace("Answer: blue", "Answer: The blue one"), {"answer": "blue"}, None),
        ("", {"answer": "blue"}, "empty_answer"),
        (GOOD.replace("300", "1300"), {"answer": "blue"}, "invalid_box"),
        (GOOD.replace("[10, 20, 300, 400]", "[0.01, 0.02, 0.3, 1.0]"), {"answer": "blue"}, "invalid_box"),  # 0-1
        (GOOD.replace("[10, 20, 300, 400]", "[10.5, 20, 300, 400]"), {"answer": "blue"}, "invalid_box"),  # decimals
        (GOOD.replace("<ref>cup</ref>", "cup "), {"answer": "blue"}, "box_without_ref"),
        (GOOD.replace("</ref>", ""), {"answer": "blue"}, "box_without_ref"),
        (GOOD.replace(" is", " and the <ref>plate</ref> are"), {"answer": "blue"}, "malformed_tag"),
        (GOOD + " <box>[1, 2", {"answer": "blue"}, "malformed_tag"),
        (GOOD.replace("\nAnswer: blue", " blue."), {"answer": "blue"}, "no_final_answer"),
        (GOOD.replace("\nAnswer: blue", " It is clearly blue. Answer: blue"), {"answer": "blue"}, None),  # inline
        (GOOD.replace("\nAnswer: blue", " **Answer:** blue"), {"answer": "blue"}, None),
        (GOOD.replace("\nAnswer: blue", " Answer: red"), {"answer": "blue"}, "wrong_answer"),
        (GOOD.replace("\nAnswer: blue", "\nAnswer:"), {"answer": "blue"}, "no_final_answer"),
        (GOOD, {"answer": "red"}, "wrong_answer"),
        (GOOD.replace("blue", "not blue"), {"answer": "blue"}, "wrong_answer"),
        (
            GOOD.replace("Answer: blue", "Answer: (B)"),
            {"answer": "blue", "choices": ["red", "blue"], "answer_index": 1},
            None,
        ),
        (
            GOOD.replace("Answer: blue", "Answer: A"),
            {"answer": "blue", "choices": ["red", "blue"], "answer_index": 1},
            "wrong_answer",
        ),
        (  # the wrong letter with the right text is not an answer (the letter once read as the article "a")
            GOOD.replace("Answer: blue", "Answer: (A) blue"),
            {"answer": "blue", "choices": ["red", "blue"], "answer_index": 1},
            "wrong_answer",
        ),
        (GOOD.replace("Answer: blue", "Answer: 2apples"), {"answer": "2 apples"}, "wrong_answer"),  # as evaluate scores
    ],
)
def test_check_answer(text: str, record: dict[str, Any], problem: str | None) -> None:
    assert check_answer(text, record).problem == problem


def test_an_inline_answer_is_accepted_onto_its_own_line_and_a_missing_one_shows_the_end() -> None:
    inline = "The <ref>cup</ref><box>[10, 20, 300, 400]</box> is clearly blue. Answer: Blue"
    record = {"answer": "blue", "objects": []}
    assert check_answer(inline, record).problem is None
    accepted = accepted_record(record, inline, distill_info={})
    assert accepted["rationale"] == "The <ref>cup</ref><box>[10, 20, 300, 400]</box> is clearly blue.\nAnswer: blue"
    assert accepted["objects"] == [{"ref": "cup", "box": [10, 20, 300, 400]}]
    rambling = GOOD.replace("\nAnswer: blue", " " + "and so on " * 20 + "so the colour is blue")
    verdict = check_answer(rambling, record)
    assert verdict.problem == "no_final_answer" and verdict.detail.endswith("so the colour is blue'")


def test_a_region_the_question_gives_is_not_one_of_the_teachers_objects() -> None:
    text = "The <ref>region</ref><box>[100, 200, 300, 400]</box> holds a <ref>cat</ref><box>[120, 220, 280, 380]</box>."
    record = {"question": "What is in <box>[100, 200, 300, 400]</box>?", "answer": "cat", "objects": []}
    assert check_answer(text + " Answer: cat", record).problem is None
    accepted = accepted_record(record, text + " Answer: cat", distill_info={})
    assert accepted["objects"] == [{"ref": "cat", "box": [120, 220, 280, 380]}]
    only = "The <ref>region</ref><box>[100, 200, 300, 400]</box> shows a cat. Answer: cat"
    assert check_answer(only, record).problem == "only_question_box"  # corrected, else rejected: never paid for twice
    assert check_answer(only, {**record, "objects": [{"ref": "cat", "box": [1, 2, 3, 4]}]}).problem is None


def _png(color: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_message(data: bytes) -> list[dict[str, Any]]:
    return prompts.direct_messages({"question": "q", "answer": "a"}, prompts.image_data_url(data), hint_answer=False)


def test_request_key_hashes_the_image_bytes() -> None:
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    params = {"temperature": 0.2, "max_tokens": 10}
    assert request_key("m", _image_message(red), params) == request_key("m", _image_message(red), params)
    assert request_key("m", _image_message(red), params) != request_key("m", _image_message(blue), params)
    assert request_key("m", _image_message(red), params) != request_key("other", _image_message(red), params)


def test_retry_timing() -> None:
    policy = RetryPolicy(max_attempts=8, base=1.0, cap=10.0)
    rng = random.Random(1)
    delays = [policy.delay(attempt, None, rng) for attempt in range(1, 8)]
    assert all(0.5 * min(10, 2 ** (a - 1)) <= d <= 1.5 * min(10, 2 ** (a - 1)) for a, d in zip(range(1, 8), delays))
    assert max(delays) <= 15.0  # capped, then jittered
    assert 3.0 <= policy.delay(1, 3.0, rng) <= 3.3  # Retry-After wins over the exponential schedule
    assert 10.0 <= policy.delay(1, 100.0, rng) <= 11.0  # ...up to the cap
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert retry_after_seconds({}) is None


def test_cache_parts_survive_and_corrupt_parts_are_skipped(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache")

    async def fill(cache: AnswerCache, keys: range) -> None:
        for key in keys:
            await cache.add({"key": f"k{key}", "text": f"t{key}"})

    writer = AnswerCache(uri, "w1", flush_every=3, flush_seconds=3600)
    asyncio.run(fill(writer, range(7)))
    assert writer.stored_parts == 2  # 6 answers stored, one still buffered
    assert AnswerCache(uri, "reader").load() == 6
    writer.flush()
    (tmp_path / "cache" / "parts" / "w0-000001.jsonl.gz").write_bytes(gzip.compress(b"{not json")[:10])
    reader = AnswerCache(uri, "reader")
    assert reader.load() == 7 and reader.get("k6") == {"key": "k6", "text": "t6"}


def test_a_cache_part_storage_cannot_serve_stops_the_run_instead_of_paying_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = str(tmp_path / "cache")
    AnswerCache(uri, "w").add_now([{"key": "paid", "text": "t"}])
    unreachable = storage.StorageError("cannot reach bucket 'b' at endpoint http://s3: check AWS_ENDPOINT_URL_S3")
    monkeypatch.setattr(storage, "read_bytes", lambda uri: (_ for _ in ()).throw(unreachable))
    with pytest.raises(storage.StorageError, match="cannot reach"):  # skipped, its answers would be bought again
        AnswerCache(uri, "reader").load()
    gone = storage.MissingError("the part does not exist")  # deleted between the listing and the read
    monkeypatch.setattr(storage, "read_bytes", lambda uri: (_ for _ in ()).throw(gone))
    assert AnswerCache(uri, "reader").load() == 0


def test_cache_stores_answers_that_waited_too_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = moved_clock(monkeypatch, vcot.llm.cache)  # a busy machine's pauses cannot make an answer due early

    async def quiet_spell() -> AnswerCache:
        cache = AnswerCache(str(tmp_path), "w", flush_every=100, flush_seconds=10)
        await cache.add({"key": "a", "text": "t"})
        assert cache.stored_parts == 0
        now[0] += 9
        await cache.flush_due()  # what the stage's keeper task calls every --cache-flush-seconds
        assert cache.stored_parts == 0  # not due yet
        now[0] += 1
        await cache.flush_due()
        return cache

    assert asyncio.run(quiet_spell()).stored_parts == 1
    assert AnswerCache(str(tmp_path), "r").load() == 1


def test_cache_on_s3(s3_bucket: str) -> None:
    cache = AnswerCache(f"{s3_bucket}/cache", "w", flush_every=1)
    asyncio.run(cache.add({"key": "k", "text": "t"}))
    assert AnswerCache(f"{s3_bucket}/cache", "r").load() == 1


def test_identical_requests_in_flight_share_one_call(tmp_path: Path) -> None:
    calls = []

    async def backend(key: str, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> Completion:
        calls.append(key)
        await asyncio.sleep(0.01)
        return Completion("answer", 1, 1)

    async def ask_twice() -> list[Completion]:
        teacher = CachedChat("m", {}, AnswerCache(str(tmp_path), "w"), Ledger("m", "r"), backend)
        messages = [{"role": "user", "content": "same"}]
        return await asyncio.gather(*(teacher.ask(messages, record_id="r", purpose="p") for _ in range(3)))

    assert [c.text for c in asyncio.run(ask_twice())] == ["answer"] * 3
    assert len(calls) == 1


def test_ledger_prices() -> None:
    ledger = Ledger("gpt-4o-2024-08-06", "r")
    ledger.record(1_000_000, 0)
    ledger.record(1_000_000, 0, batch=True)
    assert ledger.estimated_cost_usd() == 2.5 + 1.25
    custom = Ledger("local-vllm", "r", prices={"local-vllm": (0.0, 0.0)})
    custom.record(10, 10)
    assert custom.estimated_cost_usd() == 0.0
    assert Ledger("mystery", "r").to_dict()["estimated_cost_usd"] is None


def test_large_images_are_shrunk_before_sending() -> None:
    url = prompts.image_data_url(_png((1, 2, 3), size=(300, 150)), max_side=100)
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (100, 50)
    small = _png((1, 2, 3), size=(30, 15))
    assert prompts.image_data_url(small, max_side=100).endswith(base64.b64encode(small).decode())


def test_crop_zoom_upscales_the_box() -> None:
    image = _png((0, 128, 0), size=(200, 100))
    crop = Image.open(io.BytesIO(prompts.crop_zoom(image, (0, 0, 100, 100), size=448, margin=0.0)))
    assert crop.size == (448, 224)  # 20 x 10 pixels, upscaled to a longer side of 448


def test_config_defaults_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    config = DistillConfig(input="s3://b/convert", output="s3://b/runs/distill", num_shards=4)
    assert config.shard_index == 2
    assert config.cache_uri == "s3://b/runs/_distill_cache"
    assert DistillConfig(input="in", output="s3://b", num_shards=4).cache_uri == "s3://b/_distill_cache"
    for bad in ({"concurrency": 0}, {"num_shards": 2}, {"prices": "[1]"}, {"output": "s3://b/convert"}):
        with pytest.raises(ValueError):
            DistillConfig(**{"input": "s3://b/convert", "output": "s3://b/out", **bad})


def _stage_on_s3(root: str, teacher_server: Callable[..., Any], tmp_path: Path) -> None:
    records = []
    for index in range(4):
        record = make_record(tmp_path, index)
        record["image"] = f"{root}/images/{index}.png"
        storage.write_bytes(record["image"], Path(tmp_path / "images" / f"{index}.png").read_bytes())
        records.append(record)
    input_uri = commit_input(f"{root}/convert", records)
    server = teacher_server()
    report = distill(fast_config(input_uri, f"{root}/distill", server))["stats"]
    assert report["counts"] == {"input": 4, "distilled": 4}
    assert manifest.read_manifest(f"{root}/distill")["records"] == 4
    assert AnswerCache(f"{root}/_distill_cache", "r").load() == 4
    assert storage.exists(f"{root}/distill/quality.json")
    distilled = [
        r
        for p in ("train/", "val/")
        for uri in manifest.committed_files(f"{root}/distill", p)
        for r in shards.read_jsonl(uri)
    ]
    assert sorted(r["id"] for r in distilled) == sorted(r["id"] for r in records)
    again = distill(fast_config(input_uri, f"{root}/distill", server, overwrite=True))["stats"]
    assert again["ledger"]["requests"] == 0 and server.chat_requests == 4


def test_stage_on_s3(s3_bucket: str, api_key: str, teacher_server: Callable[..., Any], tmp_path: Path) -> None:
    _stage_on_s3(s3_bucket, teacher_server, tmp_path)


@pytest.mark.integration
def test_stage_on_the_real_local_s3_server(
    real_s3: str, api_key: str, teacher_server: Callable[..., Any], tmp_path: Path
) -> None:
    _stage_on_s3(real_s3, teacher_server, tmp_path)


def test_in_order_yields_in_input_order_within_the_window() -> None:
    running, most = 0, 0

    async def work(delay: float) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(delay)
        running -= 1
        return delay

    async def collect() -> list[Any]:
        return [result async for result in in_order(work, [0.03, 0.01, 0.02, 0.0, 0.01], window=3)]

    assert asyncio.run(collect()) == [0.03, 0.01, 0.02, 0.0, 0.01]
    assert most == 3


def test_in_order_stops_on_the_first_failure_starts_nothing_more_and_drains() -> None:
    stopped, started, finished = [], [], []

    async def work(item: int) -> Any:
        started.append(item)
        if item == 1:
            raise RuntimeError("boom")
        await asyncio.sleep(0.05 if item == 0 else 0)
        finished.append(item)
        return item

    async def collect() -> list[Any]:
        return [r async for r in in_order(work, list(range(10)), window=4, on_failure=lambda: stopped.append(1))]

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(collect())
    assert stopped == [1]
    assert sorted(started) == [0, 1, 2, 3]  # the window; nothing after the failure
    assert sorted(finished) == [0, 2, 3]  # running items were drained, not cancelled


def test_rejected_lines_follow_the_one_record_output_contract() -> None:
    """distill writes the rejected/ line convert writes (docs/records.md): subset included, the raw record cut."""
    from vcot.distill.stage import rejected_line
    from vcot.grounding.records import RAW_LIMIT, Rejection

    record = {"id": "viscot:gqa:val:7", "subset": "gqa", "question": "q" * 5000}
    line = rejected_line(record, 7, "no_final_answer", "d" * 5000, answer="a" * 5000)
    convert_line = Rejection("no_final_answer", "x", 7, id=record["id"], subset="gqa", raw=record).to_dict()
    assert set(line) == set(convert_line) | {"answer"} and line["subset"] == "gqa"
    assert len(line["raw"]) == RAW_LIMIT + 3 and line["raw"].endswith("...")
    assert len(line["detail"]) == RAW_LIMIT and len(line["answer"]) == RAW_LIMIT + 3


def test_a_photo_stored_turned_is_sent_and_cropped_upright() -> None:
    """The teacher sees the image the records' boxes are of: EXIF orientation applied, as training loads it."""
    stored = Image.new("RGB", (40, 30), (128, 128, 128))
    stored.paste((255, 0, 0), (0, 0, 4, 30))  # the stored left edge: the displayed top edge at orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif.tobytes())
    url = prompts.image_data_url(buffer.getvalue())
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (30, 40)
    top = Image.open(io.BytesIO(prompts.crop_zoom(buffer.getvalue(), (0, 0, 1000, 100), size=30))).convert("RGB")
    assert top.size == (30, 4) and top.getpixel((15, 1))[0] > 200  # the top tenth is the red stripe
