"""``vcot-demo --server``: the page's engine on a served model (vcot.demo.served), against a real HTTP server that
speaks the OpenAI protocol and streams (vcot.dev.fake_openai). The browser test runs it end to end; the real vLLM's
stream is compared with the in-process model's in tests/export/test_served.py."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from jobs.demo import main
from vcot.demo.app import answer
from vcot.demo.engine import Options, QuestionLimits
from vcot.demo.served import ServedModel, connect_served
from vcot.dev.fake_openai import FakeOpenAI
from vcot.errors import ConfigError, VcotError
from vcot.grounding.model_format import ModelFormat

RESPONSE = "I find the <ref>square</ref><box>[100, 200, 500, 600]</box>. It is red. Answer: red"


@pytest.fixture
def card(tmp_path: Path) -> tuple[Path, ModelFormat]:
    """An export's folder with its vcot-model.json (a system turn, so the request shows it)."""
    fmt = dataclasses.replace(ModelFormat.for_family("qwen2.5-vl"), system_prompt="You ground what you name.")
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "vcot-model.json").write_text(json.dumps(fmt.to_dict()))
    return folder, fmt


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    path = tmp_path / "square.png"
    Image.new("RGB", (160, 120), "gray").save(path)
    return path


def test_the_page_draws_the_boxes_of_the_served_stream(card: tuple[Path, ModelFormat], upload: Path) -> None:
    folder, fmt = card
    with FakeOpenAI(answer=lambda _: RESPONSE, api_key="", served_models=("r1",)) as server:
        engine = connect_served(server.base_url, str(folder))  # the name: the one the server lists
        updates = list(answer(engine, str(upload), "What color is the square?", 64, 1.1, False, False, 0.7, 0.9))
        body = server.last_request
    image, reasoning, final, status = updates[-1]
    assert final == "red" and "1 box drawn" in status
    assert "".join(segment["token"] for segment in reasoning.value) == RESPONSE
    assert server.streamed_chunks > 2 and len(updates) > 3, "drawn as it streams, not at the end"
    assert isinstance(image, Image.Image) and image.getpixel((16, 24)) != image.getpixel((80, 60))  # a box edge drawn
    # asked as the model was trained: the card's system turn, the upload's pixels, greedy, the page's settings
    assert (body["model"], body["stream"], body["max_tokens"], body["temperature"]) == ("r1", True, 64, 0.0)
    assert body["repetition_penalty"] == 1.1 and "top_p" not in body
    system, user = body["messages"]
    assert system == {"role": "system", "content": fmt.system_prompt}
    sent = Image.open(io.BytesIO(base64.b64decode(user["content"][0]["image_url"]["url"].split(",", 1)[1])))
    assert sent.tobytes() == Image.open(upload).convert("RGB").tobytes()


def test_a_box_typed_in_the_question_reaches_the_model_in_its_frame(upload: Path) -> None:
    """House coordinates of the upload (160x120), as a record's question box: a Qwen2.5-VL model in absolute pixels
    is asked in pixels of the image as its processor resizes it."""
    absolute = ModelFormat.for_family("qwen2.5-vl", coords="qwen2.5-absolute")
    question = "What color is the shape in <box>[0, 0, 500, 500]</box>?"
    expected = absolute.render("<box>[0, 0, 500, 500]</box>", 160, 120)
    assert expected != "<box>[0, 0, 500, 500]</box>"
    with FakeOpenAI(answer=lambda _: RESPONSE, api_key="") as server:
        engine = ServedModel(server.base_url, "m", absolute)
        "".join(engine.stream(engine.prepare(str(upload)), question, Options()))
        body = server.last_request
    asked = body["messages"][-1]["content"][-1]["text"]
    assert asked.startswith(f"What color is the shape in {expected}?")


def test_sampling_and_no_penalty_are_asked_as_set(card: tuple[Path, ModelFormat], upload: Path) -> None:
    folder, fmt = card
    with FakeOpenAI(answer=lambda _: RESPONSE, api_key="") as server:
        engine = ServedModel(server.base_url, "m", fmt, params={"skip_special_tokens": False})
        prepared = engine.prepare(str(upload))
        text = "".join(engine.stream(prepared, "Q?", Options(repetition_penalty=1.0, sample=True, temperature=0.5)))
        body = server.last_request
    assert text == RESPONSE
    assert (body["temperature"], body["top_p"], body["skip_special_tokens"]) == (0.5, 0.9, False)
    assert body["repetition_penalty"] == 1.0  # sent: left out, vLLM takes the export's generation_config.json's


def test_a_rationale_turn_model_is_refused_as_served_evaluate_refuses_it(
    card: tuple[Path, ModelFormat], tmp_path: Path
) -> None:
    """A server is asked for one answer turn; such a model writes only its answer there: no reasoning, no boxes."""
    _, fmt = card
    three_turn = tmp_path / "three-turn"
    three_turn.mkdir()
    (three_turn / "vcot-model.json").write_text(json.dumps(dataclasses.replace(fmt, layout="rationale_turn").to_dict()))
    with pytest.raises(ConfigError, match="rationale_turn layout .* run the demo in process"):
        connect_served("http://127.0.0.1:9/v1", str(three_turn), served_model="m")


def test_the_box_aware_penalty_asks_the_server_for_none(card: tuple[Path, ModelFormat], upload: Path) -> None:
    """A server has no box-aware penalty; a plain 1.2 (the page's default with box-aware on) was sent instead, the
    setting that pushes coordinate digits off the right numbers."""
    folder, fmt = card
    with FakeOpenAI(answer=lambda _: RESPONSE, api_key="") as server:
        engine = ServedModel(server.base_url, "m", fmt)
        "".join(engine.stream(engine.prepare(str(upload)), "Q?", Options(repetition_penalty=1.2)))
        assert server.last_request["repetition_penalty"] == 1.0
        "".join(engine.stream(engine.prepare(str(upload)), "Q?", Options(repetition_penalty=1.2, box_aware_penalty=False)))
        assert server.last_request["repetition_penalty"] == 1.2


def test_structured_boxes_send_the_cards_response_regex(card: tuple[Path, ModelFormat], upload: Path) -> None:
    folder, fmt = card
    with FakeOpenAI(answer=lambda _: RESPONSE, api_key="", served_models=("r1",)) as server:
        engine = connect_served(server.base_url, str(folder), structured_boxes=True)
        "".join(engine.stream(engine.prepare(str(upload)), "Q?", Options()))
        body = server.last_request
    assert body["structured_outputs"] == {"regex": fmt.response_regex()}
    assert re.fullmatch(body["structured_outputs"]["regex"], RESPONSE)


def test_a_visitor_who_leaves_closes_the_stream(card: tuple[Path, ModelFormat], upload: Path) -> None:
    folder, fmt = card
    long_answer = "I look. " * 200 + RESPONSE
    with FakeOpenAI(answer=lambda _: long_answer, api_key="", latency=0.01) as server:
        engine = ServedModel(server.base_url, "m", fmt)
        cancel = threading.Event()
        chunks = []
        for chunk in engine.stream(engine.prepare(str(upload)), "Q?", Options(), cancel):
            chunks.append(chunk)
            if len(chunks) == 3:
                cancel.set()
        deadline = time.monotonic() + 10
        while server.stream_disconnects == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(chunks) == 3 and server.stream_disconnects == 1, "the server saw the client go"
        assert server.streamed_chunks < len(long_answer) / server.stream_chunk
        assert list(engine.stream(engine.prepare(str(upload)), "Q?", Options(), cancel)) == []  # nothing asked
        assert server.chat_requests == 1


def test_the_served_question_is_bounded_in_characters(card: tuple[Path, ModelFormat]) -> None:
    engine = ServedModel("http://127.0.0.1:9/v1", "m", card[1])
    with pytest.raises(VcotError, match="at most 10"):
        engine.check_question("x" * 11, QuestionLimits(chars=10, tokens=1))
    assert engine.check_question("  Why?  ", QuestionLimits(chars=10, tokens=1)) == "Why?"  # the server counts tokens


def test_a_card_is_needed_and_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no vcot-model.json"):
        connect_served("http://127.0.0.1:9/v1", str(tmp_path), served_model="m")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "--model .* or --server"),
        (["--model", "m", "--server", "http://s/v1"], "not both"),
        (["--server", "http://s/v1"], "--server needs --model-card"),
        (["--server", "http://s/v1", "--model-card", "c", "--coords", "norm1000"], "--coords: only with --model"),
        (["--model", "m", "--model-card", "c"], "--model-card: only with --server"),
    ],
)
def test_flags_say_what_to_pass(flags: list[str], message: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(flags)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
