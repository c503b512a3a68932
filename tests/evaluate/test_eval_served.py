"""Served mode (``vcot-evaluate --server``) against a real HTTP server speaking the OpenAI protocol
(``vcot.dev.fake_openai``, answers planted per record): it scores what score mode scores for the same texts, asks
as the model was trained, never asks twice, keeps to its concurrency and never guesses a frame. The same mode
against a real vLLM serving a trained export: tests/export/test_served.py."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from jobs.evaluate import main
from vcot.dev.fake_openai import FakeOpenAI
from vcot.grounding.model_format import ModelFormat
from vcot.grounding.prompts import question_text
from vcot.io.images import load_rgb

PLANTED = {
    0: "The <ref>gear</ref><box>[100, 100, 300, 300]</box> is red. Answer: red",
    1: "<ref>gear</ref><box>[100, 100, 300, 200]</box> Answer: green",
    2: "<ref>a</ref><box>[0, 0, 500, 500]</box> and <ref>b</ref><box>[0,0,500,500]</box>. Answer: 2",
    3: "<box>[400, 200, 200, 400]</box> <box>[1, 2, 3]</box> Answer: TOTAL.",
    4: "I cannot see it. Answer: B",
    5: "<ref>c</ref><box>[0, 0, 120, 90]</box> Answer: no",
}
"""A response per record of ``known_data`` (right, half right, invalid and box-less ones)."""


def planted(text: str) -> str:
    """The planted response of the record the question is about (its text names the picture's index)."""
    return PLANTED[int(re.search(r"picture (\d+)", text).group(1))]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAI(answer=planted, served_models=("r1",)) as fake:
        yield fake


def served(server: FakeOpenAI, data: str, output: Path, *flags: str) -> int:
    return main(["--server", server.base_url, "--data", data, "--output", str(output), "--coords", "norm1000", *flags])


def overall(output: Path) -> dict[str, Any]:
    return json.loads((output / "metrics.json").read_text())["overall"]


def test_served_mode_scores_what_score_mode_scores(server: FakeOpenAI, known_data: Any, tmp_path: Path) -> None:
    data, records = known_data
    assert served(server, data, tmp_path / "served") == 0

    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"id": r["id"], "prediction": PLANTED[i]}) + "\n"
                                   for i, r in enumerate(records)))  # fmt: skip
    assert main(["--predictions", str(predictions), "--data", data, "--output", str(tmp_path / "scored")]) == 0
    assert overall(tmp_path / "served") == overall(tmp_path / "scored")
    assert overall(tmp_path / "served")["samples"] == len(records) == server.chat_requests

    details = json.loads((tmp_path / "served" / "metrics.json").read_text())["details"]
    assert (details["mode"], details["served_model"], details["server"]) == ("served", "r1", server.base_url)
    assert details["generation"]["temperature"] == 0.0 and details["generation"]["max_new_tokens"] == 512


def test_each_record_is_asked_as_the_model_was_trained(known_data: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """The card's system turn, the image's pixels (lossless), the exact question and instruction, greedy."""
    data, records = known_data
    card = tmp_path / "export"
    card.mkdir()
    fmt = dataclasses.replace(ModelFormat.for_family("qwen2.5-vl"), system_prompt="You ground every object you name.")
    (card / "vcot-model.json").write_text(json.dumps(fmt.to_dict()))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a server without a key (vLLM's default)
    with FakeOpenAI(answer=planted, api_key="") as server:
        assert main(["--server", server.base_url, "--data", data, "--output", str(tmp_path / "eval"), "--model-card",
                     str(card), "--max-samples", "1", "--max-new-tokens", "64",
                     "--server-params", '{"repetition_penalty": 1.0}']) == 0  # fmt: skip
        body = server.last_request
    assert body["model"] == "fake-model"  # the one the server lists
    assert (body["temperature"], body["max_tokens"], body["repetition_penalty"]) == (0.0, 64, 1.0)
    system, user = body["messages"]
    assert system == {"role": "system", "content": fmt.system_prompt}
    image, text = user["content"]
    assert text == {"type": "text", "text": question_text(records[0], fmt)}
    url = image["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.tobytes() == load_rgb(records[0]["image"]).tobytes()


def test_a_rerun_asks_nothing_and_a_stopped_run_asks_only_for_the_rest(
    known_data: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    data, _ = known_data
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    cache = ["--server-cache", str(tmp_path / "cache"), "--server-concurrency", "1"]

    def refused(text: str, attempt: int) -> str | None:  # the endpoint refuses the key for one record's request
        return "401" if "picture 4" in text else None

    with FakeOpenAI(answer=planted, fault=refused) as server:
        assert served(server, data, tmp_path / "stopped", *cache) == 1  # the refusal stops the run, answers kept
        answered = server.statuses["200"]
    assert 0 < answered < len(PLANTED)
    with FakeOpenAI(answer=planted) as server:
        assert served(server, data, tmp_path / "resumed", *cache) == 0
        assert server.chat_requests == len(PLANTED) - answered  # only what the stopped run did not get
        assert served(server, data, tmp_path / "again", *cache) == 0
        assert server.chat_requests == len(PLANTED) - answered  # a rerun asks nothing
    assert overall(tmp_path / "again") == overall(tmp_path / "resumed")


def test_requests_in_flight_keep_to_the_concurrency(server: FakeOpenAI, known_data: Any, tmp_path: Path) -> None:
    data, _ = known_data
    server.latency = 1.0  # long enough that two requests overlap on a busy machine
    assert served(server, data, tmp_path / "eval", "--server-concurrency", "2") == 0
    assert server.max_in_flight == 2 and server.chat_requests == len(PLANTED)


def test_the_frame_is_read_from_the_card_and_never_guessed(
    server: FakeOpenAI, known_data: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = known_data
    argv = ["--server", server.base_url, "--data", data, "--output", str(tmp_path / "none")]
    assert main(argv) == 2
    assert "pass --model-card" in capsys.readouterr().err

    card = tmp_path / "export"
    card.mkdir()
    absolute = ModelFormat.for_family("qwen2.5-vl", coords="qwen2.5-absolute")
    (card / "vcot-model.json").write_text(json.dumps(absolute.to_dict()))
    assert main(["--server", server.base_url, "--data", data, "--output", str(tmp_path / "card"),
                 "--model-card", str(card / "vcot-model.json")]) == 0  # fmt: skip
    details = json.loads((tmp_path / "card" / "metrics.json").read_text())["details"]
    assert details["model_format"]["coords"] == "qwen2.5-absolute"
    assert served(server, data, tmp_path / "norm1000") == 0  # the same answers read in the house frame
    assert overall(tmp_path / "card")["mean_iou"] != overall(tmp_path / "norm1000")["mean_iou"]
    assert main([*argv[:-1], str(tmp_path / "contradicted"), "--model-card", str(card), "--coords", "norm1000"]) == 2


def test_several_served_models_are_named_not_chosen(
    known_data: Any, tmp_path: Path, monkeypatch: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = known_data
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAI(answer=planted, served_models=("base", "r1")) as server:
        assert served(server, data, tmp_path / "eval") == 2
        assert "serves 2 models (base, r1): pass --served-model NAME" in capsys.readouterr().err
        assert served(server, data, tmp_path / "eval", "--served-model", "r1") == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "m", "--served-model", "r1"], "--served-model: only with --server"),
        (["--server", "http://x/v1", "--bin", "5"], "--bin and --quantize need the weights in process"),
        (["--server", "http://x/v1", "--model", "m"], "give exactly one of"),
        (["--server", "http://x/v1", "--server-params", "[1]"], "is not a JSON object"),
    ],
)
def test_served_flags_are_checked_before_anything_runs(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--data", str(tmp_path), "--output", str(tmp_path / "o"), *flags])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_a_record_whose_image_cannot_be_read_is_skipped_and_counted(
    server: FakeOpenAI, known_data: Any, tmp_path: Path
) -> None:
    data, records = known_data
    Path(records[5]["image"]).write_bytes(b"not an image")
    Path(records[4]["image"]).unlink()  # gone: skipped as in process, not the end of the run
    assert served(server, data, tmp_path / "eval") == 0
    details = json.loads((tmp_path / "eval" / "metrics.json").read_text())["details"]
    assert details["skipped_samples"] == {"image_unreadable": 2}
    answered = "".join(server.answered)
    assert server.chat_requests == len(records) - 2 and "picture 5" not in answered and "picture 4" not in answered


def test_a_record_the_server_refuses_is_skipped_and_counted_unless_it_refuses_all(
    known_data: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """vLLM answers 400 for one prompt over its context or an image it cannot take: that stopped the run, and every
    rerun stopped on the same record, so nothing was ever scored."""
    data, records = known_data
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAI(answer=planted, fault=lambda text, _: "400" if "picture 4" in text else None) as server:
        assert served(server, data, tmp_path / "eval", "--server-concurrency", "1") == 0
    details = json.loads((tmp_path / "eval" / "metrics.json").read_text())["details"]
    assert details["skipped_samples"] == {"server_rejected": 1}
    assert overall(tmp_path / "eval")["samples"] == len(records) - 1
    with FakeOpenAI(answer=planted, fault=lambda text, _: "400" if "picture 4" in text else None) as server:
        asked_twice = ("--prompt-style", "both", "--server-cache", str(tmp_path / "both-cache"))
        assert served(server, data, tmp_path / "both", *asked_twice) == 0
    both = json.loads((tmp_path / "both" / "metrics.json").read_text())["details"]
    assert both["skipped_samples"] == {"server_rejected": 1}  # records, as image_unreadable: not its two requests
    with FakeOpenAI(answer=planted, fault=lambda text, _: "400") as server:  # the model takes no images, say
        assert served(server, data, tmp_path / "none", "--server-cache", str(tmp_path / "fresh-cache")) == 1
    assert not (tmp_path / "none" / "metrics.json").exists()


def test_both_prompt_styles_are_asked_in_one_run(server: FakeOpenAI, known_data: Any, tmp_path: Path) -> None:
    data, records = known_data
    assert served(server, data, tmp_path / "eval", "--prompt-style", "both") == 0
    assert server.chat_requests == 2 * len(records)  # each record asked for reasoning and for the answer alone
    details = json.loads((tmp_path / "eval" / "metrics.json").read_text())["details"]
    assert details["served"]["cache_answers"] == {"before": 0, "after": 2 * len(records)}
    assert (tmp_path / "eval" / "predictions-direct").is_dir()


def test_a_scheduled_served_evaluation_keeps_a_history_and_flags_a_regression(
    known_data: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """``--history`` in served mode (the served re-evaluation CronJob, k8s/components/vllm): each served model's
    entry is compared with the earlier ones on the same data; a worse one exits 3."""
    data, _ = known_data
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    history = tmp_path / "eval-history.jsonl"
    with FakeOpenAI(answer=planted, served_models=("r1",)) as server:
        assert served(server, data, tmp_path / "r1", "--history", str(history)) == 0
    worse = {**PLANTED, 0: "I cannot see it. Answer: blue", 1: "Answer: blue"}
    with FakeOpenAI(answer=lambda text: worse[int(re.search(r"picture (\d+)", text).group(1))],
                    served_models=("r2",)) as server:  # fmt: skip
        assert served(server, data, tmp_path / "r2", "--history", str(history)) == 3
    entries = [json.loads(line) for line in history.read_text().splitlines()]
    assert [entry["model"] for entry in entries] == ["r1", "r2"] and entries[1]["server"] == server.base_url
    assert entries[1]["regressions"] and not entries[0]["regressions"]
    regression = json.loads((tmp_path / "r2" / "metrics.json").read_text())["regression"]
    assert regression["regressions"] == entries[1]["regressions"]


def test_history_needs_a_schedule_or_a_server(known_data: Any, tmp_path: Path, capsys: Any) -> None:
    data, _ = known_data
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "m", "--data", data, "--output", str(tmp_path / "o"), "--history", str(tmp_path / "h.jsonl")])
    assert exit_info.value.code == 2 and "--history is only used with --pointer or --server" in capsys.readouterr().err
