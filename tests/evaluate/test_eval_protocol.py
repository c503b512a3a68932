"""Stated protocols (``vcot.evaluate.protocol``): options shuffled per question and Avg@k are deterministic for a seed,
a model that always picks one letter is found out by shuffling, Avg@k averages k sampled answers, and the best-of-two
reading of a box (read in both frames, the better kept) is reported beside the single reading it inflates."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from jobs.evaluate import main
from tests.evaluate.evaluate_helpers import commit_records, make_record
from vcot.dev.fake_openai import FakeOpenAI
from vcot.evaluate.protocol import option_order, sample_records, shuffle_options
from vcot.grounding.model_format import ModelFormat
from vcot.io import shards

CHOICES = ["red", "green", "blue", "yellow"]


def choice_records(root: str, count: int) -> tuple[str, list[dict[str, Any]]]:
    """Multiple-choice records whose right answer is always the first option (as some benchmarks' often is)."""
    records = [make_record(root, i, "mc", [[100, 100, 300, 300]], "red", choices=list(CHOICES), answer_index=0)
               for i in range(count)]  # fmt: skip
    return commit_records(root, records), records


def always_a(text: str) -> str:
    return "<ref>it</ref><box>[100, 100, 300, 300]</box> Answer: A"


def letter_of_red(text: str) -> str:
    """A model that reads the options and picks red wherever it is."""
    options = re.findall(r"\(([A-D])\) (\w+)", text)
    return "Answer: " + next(letter for letter, name in options if name == "red")


def metrics(output: Path) -> dict[str, Any]:
    return json.loads((output / "metrics.json").read_text())


def rows(output: Path, name: str = "predictions") -> list[dict[str, Any]]:
    return list(shards.read_jsonl(str(output / name / "00000-of-00001.jsonl.gz")))


def served(server: FakeOpenAI, data: str, output: Path, *flags: str) -> int:
    return main(["--server", server.base_url, "--data", data, "--output", str(output), "--coords", "norm1000", *flags])


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def test_an_option_order_depends_only_on_seed_question_and_sample() -> None:
    assert option_order(5, "q1", 0, 4) == option_order(5, "q1", 0, 4)
    assert len({tuple(option_order(seed, "q1", 0, 4)) for seed in range(40)}) > 10  # seeds draw different orders
    assert option_order(5, "q1", 0, 4) != option_order(5, "q1", 1, 4) or option_order(5, "q1", 2, 4) != option_order(5, "q1", 0, 4)
    record = {"id": "q1", "choices": CHOICES, "answer_index": 2, "answer": "blue"}
    shown = shuffle_options(record, seed=5)
    assert shown["choices"][shown["answer_index"]] == "blue" and sorted(shown["choices"]) == sorted(CHOICES)
    assert record["choices"] == CHOICES and record["answer_index"] == 2  # the original is left alone
    assert shuffle_options({"id": "open", "question": "?"}, seed=5) == {"id": "open", "question": "?"}
    by_letter = {"id": "q2", "choices": CHOICES, "answer_index": None, "answer": "B"}  # the answer is a letter
    assert shuffle_options(by_letter, seed=5) == by_letter


def test_shuffling_spreads_the_right_answer_over_every_position() -> None:
    records = [{"id": f"q{i}", "choices": CHOICES, "answer_index": 0} for i in range(800)]
    positions = Counter(r["answer_index"] for r in sample_records(records, 1, seed=3)[0])
    assert set(positions) == {0, 1, 2, 3} and all(150 < n < 250 for n in positions.values()), positions


def test_shuffled_options_find_out_a_model_that_always_says_a(tmp_path: Path) -> None:
    data, records = choice_records(str(tmp_path), 40)
    with FakeOpenAI(answer=always_a) as server:
        assert served(server, data, tmp_path / "plain") == 0
        assert served(server, data, tmp_path / "shuffled", "--shuffle-options", "11") == 0
        assert served(server, data, tmp_path / "again", "--shuffle-options", "11", "--server-cache", str(tmp_path / "c2")) == 0
    assert metrics(tmp_path / "plain")["overall"]["answer_accuracy"] == 1.0  # position bias rewarded
    shuffled = metrics(tmp_path / "shuffled")["overall"]["answer_accuracy"]
    assert 0.05 < shuffled < 0.5, shuffled  # about one in four
    first, second = rows(tmp_path / "shuffled"), rows(tmp_path / "again")
    assert [(r["id"], r["options_order"], r["answer_correct"]) for r in first] == \
           [(r["id"], r["options_order"], r["answer_correct"]) for r in second]  # fmt: skip
    assert metrics(tmp_path / "shuffled")["details"]["protocol"]["shuffle_options"] == 11

    with FakeOpenAI(answer=letter_of_red) as reader:  # a model that reads the options is not hurt
        assert served(reader, data, tmp_path / "reader", "--shuffle-options", "11", "--server-cache", str(tmp_path / "c3")) == 0
    assert metrics(tmp_path / "reader")["overall"]["answer_accuracy"] == 1.0


def test_avg_at_k_averages_k_sampled_answers_and_never_asks_twice(tmp_path: Path) -> None:
    data, records = choice_records(str(tmp_path), 6)

    def right_on_even_seeds(text: str, seed: int) -> str:
        return "<ref>it</ref><box>[100, 100, 300, 300]</box> Answer: " + ("red" if seed % 2 == 0 else "blue")

    with FakeOpenAI(answer=always_a, sampled=right_on_even_seeds) as server:
        flags = ("--samples", "4", "--temperature", "1.0", "--seed", "10")
        assert served(server, data, tmp_path / "k4", *flags) == 0
        assert dict(server.seeds) == {10: 6, 11: 6, 12: 6, 13: 6}
        asked = server.chat_requests
        assert served(server, data, tmp_path / "k4", *flags, "--overwrite") == 0
        assert server.chat_requests == asked  # every sample came from the cache
    found = metrics(tmp_path / "k4")
    served_details = found["details"]["served"]  # one run asked all K samples: one cache load, one ledger
    assert served_details["cache_answers"] == {"before": 24, "after": 24}
    assert served_details["ledger"]["cache_hits"] == 24
    assert found["overall"]["answer_accuracy"] == 1.0  # the first answer (seed 10)
    assert found["avg_at_k"]["k"] == 4
    assert found["avg_at_k"]["overall"]["answer_accuracy"] == 0.5
    assert found["avg_at_k"]["range"]["answer_accuracy"] == [0.0, 1.0]
    assert found["avg_at_k"]["overall"]["first_box_acc_at_50"] == 1.0  # grounding the same in every sample
    assert found["details"]["protocol"] | {"samples": 4, "temperature": 1.0, "seed": 10} == found["details"]["protocol"]
    others = rows(tmp_path / "k4", "predictions-samples")
    assert sorted(Counter(r["sample"] for r in others).items()) == [(1, 6), (2, 6), (3, 6)]
    assert "Avg@4" in (tmp_path / "k4" / "report.html").read_text()


def test_greedy_answers_over_shuffled_orders_are_an_avg_at_k(tmp_path: Path) -> None:
    data, _ = choice_records(str(tmp_path), 20)
    with FakeOpenAI(answer=always_a) as server:
        assert served(server, data, tmp_path / "k3", "--samples", "3", "--shuffle-options", "2") == 0
        assert set(server.seeds) == {None}  # greedy: no seed sent (and an order drawn twice asked once)
    found = metrics(tmp_path / "k3")["avg_at_k"]
    orders = {(r["id"], tuple(r["options_order"])) for r in rows(tmp_path / "k3", "predictions-samples")}
    assert len(orders) > 20  # each sample asked in its own order
    assert 0.0 < found["overall"]["answer_accuracy"] < 0.6


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--samples", "3"], "--temperature"),
        (["--samples", "2", "--temperature", "1", "--prompt-style", "both"], "one --prompt-style"),
        (["--temperature", "-1"], "--temperature must be"),
        (["--samples", "2", "--temperature", "1", "--judge-model", "j"], "no --judge-model"),
    ],
)
def test_protocol_flags_that_cannot_work_are_refused(tmp_path: Path, capsys: Any, flags: list[str], says: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--server", "http://127.0.0.1:9/v1", "--data", str(tmp_path), "--output", str(tmp_path / "o"), *flags])
    assert stopped.value.code == 2 and says in capsys.readouterr().err


def test_predictions_cannot_be_shuffled_after_the_fact(tmp_path: Path, capsys: Any) -> None:
    args = ["--predictions", str(tmp_path / "p.jsonl"), "--data", str(tmp_path), "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--shuffle-options", "1"])
    assert stopped.value.code == 2 and "predictions were already answered" in capsys.readouterr().err


def test_structured_boxes_ask_for_the_formats_regex_and_are_recorded(tmp_path: Path) -> None:
    data, _ = choice_records(str(tmp_path), 3)
    with FakeOpenAI(answer=always_a) as server:
        assert served(server, data, tmp_path / "out", "--structured-boxes", "--server-params", '{"seed": 5}') == 0
        body = server.last_request
    regex = ModelFormat.for_family("qwen2.5-vl").response_regex()
    assert body["structured_outputs"] == {"regex": regex} and body["seed"] == 5  # the user's params kept
    assert re.fullmatch(regex, always_a(""))
    assert metrics(tmp_path / "out")["details"]["generation"]["structured_boxes"] is True


def test_structured_boxes_need_a_server_and_a_text_syntax(tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--model", "m", "--data", str(tmp_path), "--output", str(tmp_path / "o"), "--structured-boxes"])
    assert stopped.value.code == 2 and "only with --server" in capsys.readouterr().err
    with pytest.raises(ValueError, match="special tokens"):
        ModelFormat.for_family("qwen2.5-vl", box_syntax="qwen").response_regex()


def test_best_of_two_reading_is_shown_beside_the_single_reading_it_inflates(tmp_path: Path) -> None:
    """Planted answers: half write their box in the model's frame (0-1000), half in the other one (pixels of the
    resized image). Read once, only the first half is right; read both ways keeping the better, all are."""
    root = str(tmp_path)
    boxes = [[100, 150, 400, 600], [550, 500, 900, 950], [50, 50, 300, 350], [600, 100, 950, 400]]
    records = [make_record(root, i, "refcoco", [box], "it", width=640, height=480) for i, box in enumerate(boxes)]
    data = commit_records(root, records)
    own = ModelFormat.for_family("qwen2.5-vl")
    lines = []
    for i, (record, box) in enumerate(zip(records, boxes, strict=True)):
        fmt = own if i % 2 == 0 else own.other_frame()
        text = fmt.render(f"<ref>it</ref><box>{box}</box> Answer: it", record["width"], record["height"])
        lines.append(json.dumps({"id": record["id"], "prediction": text}) + "\n")
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(lines))
    assert main(["--predictions", str(predictions), "--data", data, "--output", str(tmp_path / "out")]) == 0
    overall = metrics(tmp_path / "out")["overall"]
    assert overall["single_reading_acc_at_50"] == overall["first_box_acc_at_50"] == 0.5
    assert overall["best_of_two_acc_at_50"] == 1.0 and overall["best_of_two_inflation"] == 0.5
    assert "best-of-two" in (tmp_path / "out" / "report.html").read_text()


def test_a_history_compares_a_run_only_with_runs_asked_the_same_way(tmp_path: Path) -> None:
    data, _ = choice_records(str(tmp_path), 20)
    history = tmp_path / "eval-history.jsonl"
    with FakeOpenAI(answer=always_a) as server:
        assert served(server, data, tmp_path / "greedy", "--history", str(history)) == 0  # accuracy 1.0
        shuffled = ("--shuffle-options", "4", "--history", str(history), "--server-cache", str(tmp_path / "c"))
        assert served(server, data, tmp_path / "shuffled", *shuffled) == 0  # far lower, but asked otherwise
        assert served(server, data, tmp_path / "shuffled-again", *shuffled) == 0
    entries = [json.loads(line) for line in history.read_text().splitlines()]
    assert "protocol" not in entries[0] and entries[1]["protocol"]["shuffle_options"] == 4
    assert not metrics(tmp_path / "shuffled")["regression"]["regressions"]  # not compared with the greedy 1.0
    accuracy = metrics(tmp_path / "shuffled")["overall"]["answer_accuracy"]
    assert accuracy < 0.6
    again = metrics(tmp_path / "shuffled-again")["regression"]["values"]["answer_accuracy"]
    assert again["previous"] == again["best"] == accuracy  # compared with the shuffled run only


@pytest.mark.parametrize("asked", [("--max-samples", "5"), ("--prompt-style", "direct"), ("--max-new-tokens", "64")])
def test_a_slice_direct_answers_or_another_budget_start_their_own_timeline(tmp_path: Path, asked: tuple) -> None:
    """A quick check on 5 records, or direct answers (no boxes), was compared with the whole split's chain-of-thought
    runs: a scheduled evaluation whose settings changed flagged a regression (exit 3) that measured nothing."""
    data, _ = choice_records(str(tmp_path), 20)
    history = tmp_path / "eval-history.jsonl"
    with FakeOpenAI(answer=always_a) as server:
        assert served(server, data, tmp_path / "whole", "--history", str(history)) == 0
        assert served(server, data, tmp_path / "other", *asked, "--history", str(history)) == 0
        assert served(server, data, tmp_path / "again", *asked, "--history", str(history)) == 0
    entries = [json.loads(line) for line in history.read_text().splitlines()]
    assert "protocol" not in entries[0] and set(entries[1]["protocol"]) == {asked[0][2:].replace("-", "_")}
    assert metrics(tmp_path / "other")["regression"]["values"]["answer_accuracy"]["previous"] is None
    assert metrics(tmp_path / "again")["regression"]["values"]["answer_accuracy"]["previous"] is not None
