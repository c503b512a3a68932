"""The lmms-eval plugin: lmms-eval finds ``--model vcot`` through the entry point and runs one small offline task
(its data built here) on the tiny model with an adapter; nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from PIL import Image, ImageDraw

from tests.conftest import REPO_ROOT
from vcot.evaluate.lmms import MODEL_ID, generate_by_mode, read_back
from vcot.grounding.model_format import HOUSE, ModelFormat

TASK = "vcot_tiny_vqa"
QUESTIONS = [("What color is the square?", "red", (200, 0, 0)), ("What color is the square?", "blue", (0, 0, 200)),
             ("Is there a square?", "yes", (0, 160, 0))]

TASK_YAML = f"""task: {TASK}
dataset_path: {{dataset}}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function vcot_tiny_utils.doc_to_visual
doc_to_text: !function vcot_tiny_utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 6
  until: []
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
metadata:
  version: 0.0
"""
TASK_UTILS = '''def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc):
    return doc["question"]
'''


def _task_dir(root: Path) -> Path:
    """A one-split image QA dataset saved with ``datasets`` and a task folder naming it, as lmms-eval's tasks are."""
    import datasets

    images = []
    for _, _, color in QUESTIONS:
        image = Image.new("RGB", (96, 64), (235, 235, 235))
        ImageDraw.Draw(image).rectangle([20, 10, 60, 50], fill=color)
        images.append(image)
    features = datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string"),
                                  "image": datasets.Image()})
    table = {"question": [q for q, _, _ in QUESTIONS], "answer": [a for _, a, _ in QUESTIONS], "image": images}
    dataset = datasets.DatasetDict({"test": datasets.Dataset.from_dict(table, features=features)})
    dataset.save_to_disk(str(root / "dataset"))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(dataset=root / "dataset"))
    (tasks / "vcot_tiny_utils.py").write_text(TASK_UTILS)
    return tasks


def _entry_point_dist(root: Path) -> Path:
    """The entry point pyproject.toml declares, as installed metadata (an editable install made before it existed
    does not have it yet): what lmms-eval's registry reads."""
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    dist = root / "site" / "vcot_lmms_plugin-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vcot-lmms-plugin\nVersion: 0.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in declared.items())
    (dist / "entry_points.txt").write_text("[lmms_eval.models]\n" + lines)
    return dist.parent


@pytest.mark.integration
def test_lmms_eval_runs_a_task_on_a_vcot_adapter(tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path) -> None:
    tasks, site = _task_dir(tmp_path), _entry_point_dist(tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(site), os.environ.get("PYTHONPATH", "")]),
        "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
    }
    command = [
        sys.executable, "-m", "lmms_eval", "--model", MODEL_ID,
        "--model_args", f"pretrained={tiny_model_dir},adapter={adapter_dir},max_new_tokens=6",
        "--tasks", TASK, "--include_path", str(tasks), "--batch_size", "2",
        "--output_path", str(tmp_path / "results"), "--log_samples",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-4000:]
    found = {path.name: path for path in (tmp_path / "results").rglob("*.json*")}
    results = json.loads(next(p for name, p in found.items() if name.endswith("results.json")).read_text())
    assert TASK in results["results"] and "exact_match,none" in results["results"][TASK]
    assert results["config"]["model"] == MODEL_ID
    samples_file = next(p for name, p in found.items() if name.endswith(f"{TASK}.jsonl"))
    samples = [json.loads(line) for line in samples_file.read_text().splitlines() if line.strip()]
    assert len(samples) == len(QUESTIONS)
    assert all(isinstance(sample["filtered_resps"][0], str) for sample in samples)


def test_read_back_gives_the_answer_or_house_boxes_of_the_task_image() -> None:
    absolute = ModelFormat.for_family(coords="qwen2.5-absolute", min_pixels=56 * 56, max_pixels=112 * 112)
    text = "The <ref>square</ref><box>[0, 0, 70, 28]</box> is red.\nAnswer: red"
    assert read_back(text, absolute, 200, 100) == "red"
    assert read_back(text, absolute, 200, 100, "response") == (
        "The <ref>square</ref><box>[0, 0, 500, 500]</box> is red.\nAnswer: red"
    )
    assert read_back("<box>[0, 0, 999, 999]</box> beyond the resized image", absolute, 200, 100, "response") == (
        "<box>[0, 0, 999, 999]</box> beyond the resized image"  # an invalid box is left as written, not repaired
    )
    assert read_back("no marker\nblue", HOUSE, 10, 10) == "blue"


def test_response_norm1_is_scored_right_by_lmms_evals_refcoco_task() -> None:
    """lmms-eval's RefCOCO grounding tasks read the first box as fractions of the image: a perfect house box
    (0-1000) scored IoU 0 there."""
    rec = pytest.importorskip("lmms_eval.tasks.refcoco.utils_rec")
    width, height = 640, 480
    doc = {"question_id": 1, "answer": "the man", "bbox": [64 / width, 48 / height, 320 / width, 240 / height]}
    response = "The <ref>man</ref><box>[100, 100, 500, 500]</box> is on the left. Answer: the man"
    scored = {}
    for output in ("response", "response_norm1"):
        result = rec.refcoco_bbox_rec_process_result(doc, [read_back(response, HOUSE, width, height, output)])
        scored[output] = rec.refcoco_bbox_rec_iou([result["refcoco_IoU"]])
    assert scored == {"response": 0.0, "response_norm1": pytest.approx(1.0)}


def test_a_batch_that_mixes_questions_with_and_without_images_keeps_the_images(
    tiny_model_dir: Path, adapter_dir: Path
) -> None:
    """ScienceQA mixes both: the questions with an image are answered as alone, not in text mode with the others."""
    from vcot.models.generation import GenerationSettings, generate_batch
    from vcot.models.loading import load_model_and_processor, model_family

    model, processor = load_model_and_processor(str(tiny_model_dir), adapter_uri=str(adapter_dir))
    fmt = ModelFormat.for_processor(processor, model_family(str(tiny_model_dir)), coords="norm1000")
    settings = GenerationSettings(fmt=fmt, max_new_tokens=12)
    image = Image.new("RGB", (96, 64), (235, 235, 235))
    ImageDraw.Draw(image).rectangle([20, 10, 60, 50], fill=(200, 0, 0))
    pictured = {"id": "a", "image": image, "width": 96, "height": 64, "question": "What color is the square?"}
    unpictured = {"id": "b", "image": None, "width": 1, "height": 1, "question": "What color is the square?"}
    as_text = dataclasses.replace(settings, fmt=dataclasses.replace(fmt, mode="text"))
    alone = generate_batch(model, processor, [pictured], settings) + generate_batch(model, processor, [unpictured], as_text)
    assert alone[0] != generate_batch(model, processor, [pictured], as_text)[0]  # the image changes the answer
    assert generate_by_mode(model, processor, [unpictured, pictured], settings) == alone[::-1]
