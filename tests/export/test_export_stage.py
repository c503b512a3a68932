"""Export a trained tiny run: a merged 16-bit folder that plain transformers loads and generates with, a model
card that states the coordinate convention (and whose read-back code reads boxes right), and an adapter that
names the base model the user gave, not a local cache folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from jobs.evaluate import main as evaluate_main
from jobs.export import main as export_main
from vcot.dev.tiny_model import build_tiny_model
from vcot.export.card import read_back
from vcot.grounding.boxes import norm1000_to_pixels
from vcot.grounding.model_format import ModelFormat
from vcot.grounding.prompts import build_messages
from vcot.io import manifest, storage
from vcot.train import TrainConfig, train

SETTINGS = "max_steps=2,save_steps=10,eval_steps=10"


@pytest.fixture
def s3_run(real_s3: str, tokenized_data: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A run trained on a base model that lives in S3 (synced to a local cache by train), written to S3."""
    monkeypatch.setenv("VCOT_MODEL_CACHE", str(tmp_path / "model-cache"))
    model = f"{real_s3}/models/tiny"
    storage.upload_dir(tiny_model_dir, model)
    run = f"{real_s3}/runs/r1/train"
    assert train(TrainConfig(data=tokenized_data, model=model, output=run, recipe="tiny-cpu", set=SETTINGS))
    return run


@pytest.mark.integration
def test_adapter_names_the_base_model_the_user_gave(s3_run: str, real_s3: str) -> None:
    adapter_config = storage.read_json(f"{s3_run}/adapter/adapter_config.json")
    assert adapter_config["base_model_name_or_path"] == f"{real_s3}/models/tiny"


@pytest.mark.integration
def test_export_loads_with_plain_transformers_and_generates(
    s3_run: str, real_s3: str, record_data: str, tmp_path: Path
) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    # The run's evaluation, where the chain writes it (beside train/): its metrics go in the card.
    evaluation = f"{real_s3}/runs/r1/eval"
    flags = ["--max-samples", "3", "--max-new-tokens", "8", "--threads", "1"]
    assert evaluate_main(["--model", f"{real_s3}/models/tiny", "--adapter", f"{s3_run}/adapter", "--data", record_data,
                          "--output", evaluation, *flags]) == 0  # fmt: skip
    output = f"{real_s3}/models/r1-merged"
    base_generation = f"{real_s3}/models/tiny/generation_config.json"  # Qwen's own sets a plain penalty
    storage.write_json(base_generation, {**storage.read_json(base_generation), "repetition_penalty": 1.05})
    assert export_main(["--run", s3_run, "--output", output]) == 0
    committed = manifest.read_manifest(output, expect_stage="export")
    assert {"config.json", "model.safetensors", "README.md", "vcot-model.json", "chat_template.jinja"} <= {
        f["path"] for f in committed["files"]
    }
    assert [i["uri"] for i in committed["inputs"]] == [s3_run, evaluation]
    assert export_main(["--run", s3_run, "--output", output]) == 0  # committed: the rerun is a no-op
    assert manifest.read_manifest(output) == committed
    folder = storage.download_prefix(output, tmp_path / "export")
    # vLLM takes generation_config.json as every request's default: not the plain penalty that moves box digits
    assert json.loads((folder / "generation_config.json").read_text()).get("repetition_penalty", 1.0) == 1.0

    # The layout vLLM and the hub read: the family's own classes, 16-bit weights.
    assert json.loads((folder / "processor_config.json").read_text())["processor_class"] == "Qwen2_5_VLProcessor"
    for name in ("preprocessor_config.json", "tokenizer_config.json"):
        assert json.loads((folder / name).read_text())["processor_class"] == "Qwen2_5_VLProcessor", name
    budget = json.loads((folder / "vcot-model.json").read_text())["model_format"]["vision"]
    legacy = json.loads((folder / "preprocessor_config.json").read_text())
    assert (legacy["min_pixels"], legacy["max_pixels"]) == (budget["min_pixels"], budget["max_pixels"])
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.bfloat16}

    # Plain transformers: the model, the tokenizer with its chat template, the image processor (the processor
    # class itself needs torchvision, which CPU machines lack: its one job, expanding the image token, is done here).
    model = AutoModelForImageTextToText.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    image_processor = AutoImageProcessor.from_pretrained(str(folder))
    card = json.loads((folder / "vcot-model.json").read_text())
    fmt = ModelFormat.from_dict(card)
    record = {"image": "x.png", "width": 160, "height": 120, "question": "What color is the square?"}
    text = tokenizer.apply_chat_template(build_messages(record, fmt, with_answer=False), tokenize=False, add_generation_prompt=True)
    pixels = image_processor(images=[Image.new("RGB", (160, 120), "red")], return_tensors="pt")
    count = int(pixels["image_grid_thw"].prod()) // image_processor.merge_size**2
    inputs = tokenizer([text.replace("<|image_pad|>", "<|image_pad|>" * count)], return_tensors="pt")
    generated = model.generate(**inputs, **pixels, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]

    # vcot itself (vcot-evaluate --model, the demo) loads it too, at the trained pixel budget.
    from vcot.models.loading import load_processor

    assert load_processor(str(folder)).image_processor.size["longest_edge"] == fmt.vision.max_pixels

    # The card: base model, the coordinate convention, the exact instruction, lineage down to the records.
    readme = (folder / "README.md").read_text()
    assert card["base_model"] == f"{real_s3}/models/tiny" and f"`{real_s3}/models/tiny`" in readme
    assert "## Coordinate convention" in readme and "**norm1000**" in readme and "*original* image" in readme
    assert fmt.instruction() in readme
    assert "- tokenize: " in readme and "- convert: " in readme
    samples = storage.read_json(f"{evaluation}/metrics.json")["overall"]["samples"]
    assert f"| evaluate: samples | {samples} |" in readme and "| evaluate: mean_iou |" in readme
    best = storage.read_json(f"{s3_run}/metrics.json")["best_metric"]
    assert f"| best {best['name']} (step {best['step']}) |" in readme and "| final eval_loss |" in readme

    # A wrong --model is refused before --overwrite deletes anything: the committed export stays.
    other = build_tiny_model(tmp_path / "qwen3", family="qwen3-vl")
    assert export_main(["--run", s3_run, "--output", output, "--model", str(other), "--overwrite"]) == 2
    assert manifest.read_manifest(output) == committed


@pytest.mark.parametrize("coords", ["norm1000", "qwen2.5-absolute"])
def test_the_cards_read_back_code_reads_boxes_as_vcot_does(coords: str) -> None:
    fmt = ModelFormat.for_family(coords=coords, min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    width, height = 391, 500
    house = "<ref>cup</ref><box>[100, 200, 600, 900]</box> and <ref>lid</ref><box>[0, 0, 999, 350]</box> Answer: x"
    text = fmt.render(house, width, height)
    snippet = read_back(fmt).removeprefix("```python\n").removesuffix("```")
    namespace: dict[str, object] = {}
    exec(snippet, namespace)  # noqa: S102 - the card's own code, as a user would paste it
    found = namespace["boxes_in_pixels"](text, width, height)  # type: ignore[operator]
    expected = [norm1000_to_pixels(b.box, width, height) for b in fmt.read(text, width, height).boxes]
    assert len(found) == 2
    for got, want in zip(found, expected):
        assert got == pytest.approx(want, abs=max(width, height) / 100)  # the model frame rounds to its integers


def test_only_a_committed_train_run_is_exported(
    tokenized_data: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export_main(["--run", tokenized_data, "--output", str(tmp_path / "model")]) != 0
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("vcot-export: error:") and "tokenize" in error
    assert not (tmp_path / "model").exists()


def test_a_full_fine_tune_is_pointed_at_its_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "train"
    (run / "model").mkdir(parents=True)
    (run / "model" / "vcot-model.json").write_text("{}")
    manifest.commit(str(run), stage="train", files=[], config={"recipe_values": {"finetune": "full"}})
    assert export_main(["--run", str(run), "--output", str(tmp_path / "exported")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "full fine-tune" in error and f"{run}/model" in error
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize(("layout", "cue"), [("two_turn", "<|im_start|>assistant\n"), ("rationale_turn", "<|im_start|>Analyzer\n")])
def test_the_cards_prompt_is_cued_where_the_model_writes(tiny_model_dir: Path, layout: str, cue: str) -> None:
    """An RGFN (rationale_turn) model writes its rationale in its own turn: the card cues that turn, not the assistant's."""
    from vcot.export.card import exact_prompt, turns_note
    from vcot.models.loading import load_processor

    fmt = dataclasses.replace(ModelFormat.for_family(), layout=layout)
    assert exact_prompt(load_processor(str(tiny_model_dir)), fmt).endswith(cue)
    assert ("Generate twice" in turns_note(fmt)) == (layout == "rationale_turn")


@pytest.mark.integration
def test_the_card_shows_no_evaluation_of_an_earlier_version_of_the_run(
    s3_run: str, real_s3: str, record_data: str, tokenized_data: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retrained with --overwrite, the run's sibling eval/ scored the adapter it replaced: its rerun is skipped (it
    is committed), saying so, and the card leaves its numbers out until the run is evaluated again."""
    evaluation = f"{real_s3}/runs/r1/eval"
    args = ["--model", f"{real_s3}/models/tiny", "--adapter", f"{s3_run}/adapter", "--data", record_data,
            "--output", evaluation, "--max-samples", "3", "--max-new-tokens", "8", "--threads", "1"]  # fmt: skip
    assert evaluate_main(args) == 0
    retrain = TrainConfig(data=tokenized_data, model=f"{real_s3}/models/tiny", output=s3_run, recipe="tiny-cpu",
                          set=SETTINGS + ",seed=7", overwrite=True)  # fmt: skip
    assert train(retrain)
    capsys.readouterr()
    assert evaluate_main(args) == 0  # committed: skipped
    assert "committed_from_changed_inputs" in capsys.readouterr().err
    output = f"{real_s3}/models/r1-merged"
    base_generation = f"{real_s3}/models/tiny/generation_config.json"  # Qwen's own sets a plain penalty
    storage.write_json(base_generation, {**storage.read_json(base_generation), "repetition_penalty": 1.05})
    assert export_main(["--run", s3_run, "--output", output]) == 0
    assert "| evaluate:" not in storage.read_text(f"{output}/README.md")
    assert evaluate_main([*args, "--overwrite"]) == 0
    assert export_main(["--run", s3_run, "--output", output, "--overwrite"]) == 0
    assert "| evaluate: samples | 3 |" in storage.read_text(f"{output}/README.md")
