"""``vcot-leaderboard`` end to end: benchmarks in VLMEvalKit's layout converted, two served models scored on each
(``vcot-evaluate --server`` against a server speaking the OpenAI protocol), one of them also under another protocol,
then one table: a row per model, a column group per benchmark and protocol, values equal to each evaluation's
metrics.json, and the page looked at in a real browser."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from jobs.evaluate import main as evaluate_main
from jobs.leaderboard import main as leaderboard_main
from tests.convert.test_convert_vlmevalkit import png64, write_tsv
from vcot.convert import ConvertConfig, convert
from vcot.dev.fake_openai import FakeOpenAI
from vcot.io import manifest

QUESTIONS = {
    "tree": [("What colour is the mug?", ["red", "blue", "green"], "A", [[10, 20, 110, 70]], "Perception/Attributes"),
             ("Which is left?", ["the mug", "the pen"], "B", [[120, 0, 200, 100]], "Reasoning/Ordering"),
             ("What is behind the mug?", ["a cat", "a wall"], "B", [[0, 0, 60, 40]], "Reasoning/Occlusion")],
    "hr": [("What does the sign say?", ["STOP", "GO", "EXIT"], "C", None, "FSP"),
           ("How many cars?", ["1", "2", "3", "4"], "D", None, "FCP")],
}  # fmt: skip
"""Per benchmark: question, options, right letter, evidence boxes (pixels of a 200 x 100 image) or none, category."""


def write_benchmarks(root: Path) -> dict[str, str]:
    """The two benchmark files converted: {name: committed records}."""
    data = {}
    for name, questions in QUESTIONS.items():
        header = ["index", "image", "question", "A", "B", "C", "D", "answer", "category", "target_instances"]
        rows = [{"index": i, "image": png64(200, 100, (40 * i, 90, 200)), "question": q,
                 **{letter: option for letter, option in zip("ABCD", options, strict=False)}, "answer": answer, "category": category,
                 "target_instances": json.dumps(boxes) if boxes else ""}
                for i, (q, options, answer, boxes, category) in enumerate(questions)]  # fmt: skip
        source = write_tsv(root / f"{name}.tsv", header, rows)
        data[name] = str(root / "bench" / name)
        convert(ConvertConfig(source="vlmevalkit", input=str(source), output=data[name], val_fraction=1.0))
    return data


def right_answer(text: str) -> str:
    """A model that knows every question: the right option's letter and, where the benchmark has one, its box."""
    for questions in QUESTIONS.values():
        for question, options, letter, boxes, _ in questions:
            if question in text:
                shown = dict(re.findall(r"\(([A-D])\) (.+)", text))  # the options as shown (maybe shuffled)
                said = next(k for k, v in shown.items() if v.strip() == options["ABCD".index(letter)])
                x1, y1, x2, y2 = boxes[0] if boxes else (0, 0, 0, 0)  # pixels of 200 x 100: house = x5, x10
                box = f"<ref>it</ref><box>[{x1 * 5}, {y1 * 10}, {x2 * 5}, {y2 * 10}]</box> " if boxes else ""
                return f"{box}Answer: {said}"
    raise AssertionError(text)


def always_a(text: str) -> str:
    return "<ref>it</ref><box>[0, 0, 1000, 1000]</box> Answer: A"


def evaluate_all(root: Path, data: dict[str, str]) -> dict[tuple[str, str, str], Path]:
    """Every (model, benchmark) greedy, and the good model on tree with shuffled options: {(model, bench, how): out}."""
    outputs = {}
    for model, answer in (("good-7b", right_answer), ("always-a", always_a)):
        with FakeOpenAI(answer=answer, served_models=(model,), api_key="") as server:
            for bench, records in data.items():
                ways = [("greedy", [])] + ([("shuffled", ["--shuffle-options", "3"])] if (model, bench) == ("good-7b", "tree") else [])
                for how, flags in ways:
                    out = root / "evals" / f"{model}-{bench}-{how}"
                    argv = ["--server", server.base_url, "--data", records, "--split", "all", "--output", str(out),
                            "--coords", "norm1000", "--server-cache", str(root / f"cache-{model}"), *flags]  # fmt: skip
                    assert evaluate_main(argv) == 0
                    outputs[(model, bench, how)] = out
    return outputs


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[tuple[str, str, str], Path]]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    outputs = evaluate_all(tmp_path, write_benchmarks(tmp_path))
    assert leaderboard_main(["--evals", str(tmp_path / "evals"), "--output", str(tmp_path / "board")]) == 0
    return tmp_path / "board", outputs


def test_one_row_per_model_one_column_per_benchmark_and_protocol(built: Any) -> None:
    board, outputs = built
    assert manifest.committed_stage(str(board)) == "leaderboard"
    table = json.loads((board / "leaderboard.json").read_text())
    assert [row["model"] for row in table["rows"]] == ["always-a", "good-7b"]
    columns = {(c["benchmark"], c["protocol"]): c for c in table["columns"]}
    assert sorted(columns) == [("hr", "split all, greedy"), ("tree", "split all, greedy"),
                               ("tree", "split all, greedy, options shuffled (seed 3)")]  # fmt: skip
    assert columns[("tree", "split all, greedy")]["grounded"] and not columns[("hr", "split all, greedy")]["grounded"]
    rows = {row["model"]: row for row in table["rows"]}
    for (model, bench, how), out in outputs.items():
        protocol = "split all, greedy" + (", options shuffled (seed 3)" if how == "shuffled" else "")
        found = rows[model]["cells"][columns[(bench, protocol)]["id"]]
        overall = json.loads((out / "metrics.json").read_text())["overall"]
        assert found["answer"] == overall["answer_accuracy"] and found["samples"] == overall["samples"]
        if bench == "tree":
            assert found["truth_mean_iou"] == overall["truth_mean_iou"]
            assert found["first_box_acc_at_50"] == overall["first_box_acc_at_50"]
    good_tree = rows["good-7b"]["cells"][columns[("tree", "split all, greedy")]["id"]]
    assert good_tree["answer"] == 1.0 and good_tree["first_box_acc_at_50"] == 1.0 and good_tree["consistency"] == 1.0
    a_tree = rows["always-a"]["cells"][columns[("tree", "split all, greedy")]["id"]]
    assert a_tree["answer"] == pytest.approx(1 / 3) and a_tree["first_box_acc_at_50"] == 0.0
    shuffled = columns[("tree", "split all, greedy, options shuffled (seed 3)")]["id"]
    assert rows["good-7b"]["cells"][shuffled]["answer"] == 1.0 and shuffled not in rows["always-a"]["cells"]

    lines = list(csv.reader(io.StringIO((board / "leaderboard.csv").read_text())))
    assert lines[0][0] == "model" and "tree [split all, greedy] mIoU" in lines[0] and len(lines) == 3
    assert lines[2][lines[0].index("tree [split all, greedy] answer")] == "1.0000"
    assert lines[1][lines[0].index("tree [split all, greedy, options shuffled (seed 3)] answer")] == ""


def test_a_rerun_replaces_the_older_evaluation_of_the_same_model_and_protocol(built: Any, tmp_path: Path) -> None:
    board, outputs = built
    copy = tmp_path / "evals-again"
    with FakeOpenAI(answer=always_a, served_models=("good-7b",), api_key="") as server:  # good-7b got worse
        argv = ["--server", server.base_url, "--data", str(tmp_path / "bench" / "hr"), "--split", "all",
                "--output", str(copy / "good-7b-hr"), "--coords", "norm1000"]  # fmt: skip
        assert evaluate_main(argv) == 0
    assert leaderboard_main(["--evals", f"{copy},{tmp_path / 'evals'}", "--output", str(board)]) == 0  # newest first
    table = json.loads((board / "leaderboard.json").read_text())
    hr = next(c["id"] for c in table["columns"] if c["benchmark"] == "hr")
    good = next(r for r in table["rows"] if r["model"] == "good-7b")
    assert good["cells"][hr]["answer"] == 0.0 and table["replaced"] == [str(outputs[("good-7b", "hr", "greedy")])]


def test_nothing_to_show_is_one_clear_line(tmp_path: Path, capsys: Any) -> None:
    assert leaderboard_main(["--evals", str(tmp_path), "--output", str(tmp_path / "board")]) == 2
    assert "no committed evaluate output" in capsys.readouterr().err


@pytest.mark.integration
@contextmanager
def board_page(board: Path, chromium: str, profile: Path) -> Iterator[Any]:
    """The leaderboard page open in chromium, checked to show every column group and every model's answer score as
    ``leaderboard.json`` has it, and to fetch nothing from outside."""
    from playwright.sync_api import sync_playwright

    from tests.pages.test_preview import CHROMIUM_ARGS

    table = json.loads((board / "leaderboard.json").read_text())
    outside: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 900},
        )  # fmt: skip
        try:
            page = context.new_page()
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else outside.append(r.url))
            page.goto((board / "leaderboard.html").as_uri())
            assert page.locator("th.group").count() == len(table["columns"])
            for row in table["rows"]:
                line = page.locator(f'tr[data-model="{row["model"]}"]')
                assert line.is_visible()
                for column_id, values in row["cells"].items():
                    shown = line.locator(f'td[data-column="{column_id}"][data-metric="answer"]').inner_text()
                    assert shown == f"{values['answer'] * 100:.1f}"
            yield page
        finally:
            context.close()
    assert outside == []


def test_the_page_shows_each_models_scores_in_chromium(built: Any, chromium: str, tmp_path: Path) -> None:
    board, _ = built
    table = json.loads((board / "leaderboard.json").read_text())
    with board_page(board, chromium, tmp_path / "chromium-profile") as page:
        groups = page.locator("th.group")
        assert groups.count() == 3
        assert "options shuffled (seed 3)" in groups.all_inner_texts()[2]
        tree = next(c["id"] for c in table["columns"] if (c["benchmark"], c["protocol"]) == ("tree", "split all, greedy"))
        best = page.locator(f'tr[data-model="good-7b"] td[data-column="{tree}"][data-metric="truth_mean_iou"]')
        assert best.get_attribute("class") == "best"
        assert best.evaluate("td => getComputedStyle(td).fontWeight") == "700"
        assert page.locator("#leaderboard").bounding_box()["width"] > 600


def test_a_full_fine_tunes_model_shares_its_runs_row_and_another_model_folder_does_not(tmp_path: Path) -> None:
    """A full fine-tune is evaluated as RUN/model (model mode) and as the run (the pointer's scheduled evaluation):
    one row. A base model that merely lives in a folder named model/ keeps its own name."""
    from vcot.evaluate.leaderboard import model_name

    run = tmp_path / "runs" / "r3" / "train"
    manifest.commit(str(run), stage="train", files=[], config={})
    assert model_name({"model": f"{run}/model"}) == model_name({"run": str(run)}) == str(run)
    assert model_name({"model": str(tmp_path / "base" / "model")}) == str(tmp_path / "base" / "model")
