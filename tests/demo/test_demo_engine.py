"""The demo's model side on the tiny model: its format from the card, streamed answers, readable refusals of bad
input (no image, a corrupt or oversized file, an adapter from another base model), errors that leave it serving."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from jobs.demo import main as demo_main
from tests.conftest import QWEN25_VL_GENERATION
from tests.demo.conftest import EXAMPLE, TrainedAdapter
from vcot.config import parse_config
from vcot.demo.app import answer, build_app, serve
from vcot.demo.config import DemoConfig
from vcot.demo.engine import DemoModel, Options, QuestionLimits, load_demo_model
from vcot.dev.tiny_model import TINY_SIZES, TinySize, build_tiny_model
from vcot.errors import ConfigError, VcotError
from vcot.models.loading import MODEL_CARD

DEFAULTS = Options()
SETTINGS = [DEFAULTS.max_new_tokens, DEFAULTS.repetition_penalty, DEFAULTS.box_aware_penalty, DEFAULTS.sample,
            DEFAULTS.temperature, DEFAULTS.top_p]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, trained_adapter: TrainedAdapter) -> DemoModel:
    return load_demo_model(str(tiny_model_dir), str(trained_adapter.path))


def test_the_format_comes_from_the_card_and_the_answer_streams(
    engine: DemoModel, trained_adapter: TrainedAdapter
) -> None:
    assert engine.fmt == trained_adapter.fmt  # qwen2.5-absolute, as recorded, not the processor's default frame
    assert "qwen2.5-absolute" in engine.describe()
    chunks = list(engine.stream(engine.prepare(str(trained_adapter.image)), EXAMPLE.question, DEFAULTS))
    assert len(chunks) > 1  # token by token, not one blob at the end
    assert "".join(chunks) == trained_adapter.response  # cut at the end-of-turn token


def test_the_page_handler_draws_the_box_the_model_wrote(engine: DemoModel, trained_adapter: TrainedAdapter) -> None:
    updates = list(answer(engine, str(trained_adapter.image), EXAMPLE.question, *SETTINGS))
    picture, reasoning, final, status = updates[-1]
    assert final == "red" and status.startswith("Done") and "1 box drawn" in status
    box = trained_adapter.fmt.read(trained_adapter.response, *Image.open(trained_adapter.image).size).boxes[0]
    x1, y1, _, y2 = (v / 1000 * side for v, side in zip(box.box, [*picture.size] * 2))
    assert picture.getpixel((round(x1), round((y1 + y2) / 2)))[:3] == (0xE6, 0x19, 0x4B)  # the first colour
    labels = [item["class_or_confidence"] for item in reasoning.value if item["class_or_confidence"]]
    assert labels == ["1 circle"]
    images = [update[0] for update in updates]
    drawn_at = next(i for i, image in enumerate(images) if i > 0 and isinstance(image, Image.Image))
    assert 0 < drawn_at < len(updates) - 1  # drawn while the text was still streaming, not only at the end


def test_a_box_typed_in_the_question_reaches_the_model_in_its_frame(
    engine: DemoModel, trained_adapter: TrainedAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = engine.prepare(str(trained_adapter.image))
    expected = engine.fmt.render("<box>[0, 0, 500, 500]</box>", *prepared.image.size)  # qwen2.5-absolute pixels
    assert expected != "<box>[0, 0, 500, 500]</box>"
    encoded: list[Any] = []
    asked = engine._inputs
    monkeypatch.setattr(engine, "_inputs", lambda prepared, prompt: encoded.append(asked(prepared, prompt)) or encoded[-1])
    "".join(engine.stream(prepared, "What is in <box>[0, 0, 500, 500]</box>?", Options(max_new_tokens=1)))
    assert f"What is in {expected}?" in engine.processor.tokenizer.decode(encoded[0]["input_ids"][0])


def test_sampling_samples_although_the_base_decodes_greedily_by_default(
    engine: DemoModel, trained_adapter: TrainedAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Qwen2.5-VL's generation_config.json sets top_k 1: "Sample" must not quietly give the greedy answer."""
    import torch

    for key, value in QWEN25_VL_GENERATION.items():  # the base's own config (the adapter's wrapper forwards to it)
        monkeypatch.setattr(engine.model.generation_config, key, value)
    prepared = engine.prepare(str(trained_adapter.image))
    options = Options(max_new_tokens=8, repetition_penalty=1.0, sample=True, temperature=2.0, top_p=1.0)
    answers = set()
    for seed in range(4):
        torch.manual_seed(seed)
        answers.add("".join(engine.stream(prepared, EXAMPLE.question, options)))
    assert len(answers) > 1, answers


def test_no_image_no_question_and_bad_settings_are_one_line_each(
    engine: DemoModel, trained_adapter: TrainedAdapter
) -> None:
    cases = [
        (None, EXAMPLE.question, SETTINGS, "no image"),
        (str(trained_adapter.image), "  ", SETTINGS, "no question"),
        (str(trained_adapter.image), EXAMPLE.question, [*SETTINGS[:3], True, 0.0, 0.9], "temperature above 0"),
    ]
    for path, question, settings, expected in cases:
        updates = list(answer(engine, path, question, *settings))
        assert len(updates) == 1 and expected in updates[0][-1] and updates[0][-1].startswith("⚠️")


def test_a_rationale_turn_model_reasons_in_its_analyzer_turn_then_answers(
    tiny_model_dir: Path, trained_adapter: TrainedAdapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LaCoT's layout (RGFN's runs) as evaluate asks it: the reasoning streamed from the Analyzer turn, then the
    answer turn after it. The demo cued the assistant turn, where such a model writes only its answer."""
    three_turn = shutil.copytree(trained_adapter.path, tmp_path / "three-turn")
    card = json.loads((three_turn / MODEL_CARD).read_text())
    card["model_format"]["layout"] = "rationale_turn"
    (three_turn / MODEL_CARD).write_text(json.dumps(card))
    model = load_demo_model(str(tiny_model_dir), str(three_turn))
    prompts: list[str] = []
    asked = model._inputs
    monkeypatch.setattr(model, "_inputs", lambda prepared, prompt: prompts.append(prompt) or asked(prepared, prompt))
    text = "".join(model.stream(model.prepare(str(trained_adapter.image)), EXAMPLE.question, Options(max_new_tokens=8)))
    reasoning, answer_turn = prompts
    cue = "<|im_end|>\n<|im_start|>assistant\n"
    assert reasoning.endswith("<|im_start|>Analyzer\n")
    assert answer_turn.startswith(reasoning) and answer_turn.endswith(cue)
    assert text.startswith(answer_turn[len(reasoning) : -len(cue)] + " ")  # the reasoning streamed, then the answer


def test_corrupt_and_oversized_files_are_refused_readably(engine: DemoModel, tmp_path: Path) -> None:
    corrupt = tmp_path / "photo.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20)
    with pytest.raises(VcotError, match=r"photo.png is not an image this demo can read \(OSError: .*\): upload a PNG"):
        engine.prepare(str(corrupt))
    (tmp_path / "notes.jpg").write_text("just text")
    with pytest.raises(VcotError, match=r"notes.jpg is not an image this demo can read \(not a format it knows\)"):
        engine.prepare(str(tmp_path / "notes.jpg"))
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 10_000)).save(bomb)  # 200 M pixels, a few kB on disk
    with pytest.raises(VcotError, match="bomb.png is too large to open safely"):
        engine.prepare(str(bomb))
    strip = tmp_path / "strip.png"  # over 200:1, which the Qwen processors refuse: a bare ValueError reached the page
    Image.new("RGB", (3000, 12)).save(strip)
    with pytest.raises(VcotError, match="strip.png is 3000×12: the model cannot take it .*crop or pad it"):
        engine.prepare(str(strip))


def test_a_huge_image_is_downscaled_to_the_budget_and_the_page_says_so(engine: DemoModel, tmp_path: Path) -> None:
    huge = tmp_path / "huge.png"
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(huge)
    prepared = engine.prepare(str(huge))
    assert prepared.model_size == engine.fmt.vision.resized(4000, 3000)
    assert prepared.model_size[0] * prepared.model_size[1] <= engine.fmt.vision.max_pixels
    assert "4000×3000 image" in prepared.note and "downscaled to fit its pixel budget" in prepared.note


def test_a_generation_error_is_reported_and_the_next_request_works(
    engine: DemoModel, trained_adapter: TrainedAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(**kwargs: Any) -> None:
        raise RuntimeError("CUDA out of memory")

    with monkeypatch.context() as patched:
        patched.setattr(engine.model, "generate", out_of_memory)
        updates = list(answer(engine, str(trained_adapter.image), EXAMPLE.question, *SETTINGS))
    assert "generation failed (RuntimeError: CUDA out of memory)" in updates[-1][-1]
    assert list(answer(engine, str(trained_adapter.image), EXAMPLE.question, *SETTINGS))[-1][2] == "red"


def test_an_adapter_from_another_base_model_is_refused_with_what_to_pass(
    tiny_model_dir: Path, tiny_qwen3vl_dir: Path, trained_adapter: TrainedAdapter,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(TINY_SIZES, "test", TinySize(hidden=32, intermediate=64, layers=1, heads=2, kv_heads=1))
    smaller = build_tiny_model(tmp_path / "smaller")  # the same family at another size
    # The card records the base's architecture (as train writes it): refused before any weight loads.
    for other in (tiny_qwen3vl_dir, smaller):
        refused = f"is not the base model the adapter was trained on .*pass --model {tiny_model_dir}"
        with pytest.raises(ConfigError, match=refused):
            load_demo_model(str(other), str(trained_adapter.path))
    # An older card without it: another family is told by the card's format (its weights would even load)...
    older = shutil.copytree(trained_adapter.path, tmp_path / "older")
    card = json.loads((older / MODEL_CARD).read_text())
    del card["base_architecture"]
    (older / MODEL_CARD).write_text(json.dumps(card))
    refused = f"trained on a qwen2.5-vl model, but .* is a qwen3-vl model: pass --model {tiny_model_dir}"
    with pytest.raises(ConfigError, match=refused):
        load_demo_model(str(tiny_qwen3vl_dir), str(older))
    # ...and other shapes by the weights that do not fit.
    with pytest.raises(ConfigError, match=f"adapter {older} does not fit the base model {smaller}"):
        load_demo_model(str(smaller), str(older))


def test_a_model_without_a_card_needs_coords(
    tiny_model_dir: Path, trained_adapter: TrainedAdapter, tmp_path: Path
) -> None:
    with pytest.raises(VcotError, match="no adapter at .*missing .no adapter_config.json.: pass the adapter/ folder"):
        load_demo_model(str(tiny_model_dir), str(tmp_path / "missing"))
    full = tmp_path / "full-run"  # a full fine-tune's run: model/ with its card, no adapter/
    shutil.copytree(tiny_model_dir, full / "model")
    shutil.copy(trained_adapter.path / MODEL_CARD, full / "model" / MODEL_CARD)
    with pytest.raises(ConfigError, match=f"{full} is a full fine-tune: pass --model {full}/model without --adapter"):
        load_demo_model(str(tiny_model_dir), str(full / "adapter"))
    bare = shutil.copytree(trained_adapter.path, tmp_path / "bare")
    (bare / MODEL_CARD).unlink()
    with pytest.raises(VcotError, match="no vcot-model.json next to adapter .*: pass --coords"):
        load_demo_model(str(tiny_model_dir), str(bare))
    with pytest.raises(VcotError, match="base model records no box frame: pass --coords"):
        load_demo_model(str(tiny_model_dir))
    with pytest.raises(VcotError, match="--coords norm1000 contradicts the adapter's vcot-model.json"):
        load_demo_model(str(tiny_model_dir), str(trained_adapter.path), coords="norm1000")
    card = json.loads((trained_adapter.path / MODEL_CARD).read_text())
    assert card["model_format"]["coords"] == "qwen2.5-absolute"


def test_the_command_refuses_before_serving_with_one_line(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo_main(["--model", str(tiny_model_dir)]) == 2
    assert "vcot-demo: error: a base model records no box frame: pass --coords" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        demo_main(["--model", str(tiny_model_dir), "--port", "70000"])
    assert exited.value.code == 2 and "--port 70000 is not a TCP port" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# What one visitor may hold of the one model: the question, a generation nobody reads (hardening items 13, 18)
# --------------------------------------------------------------------------------------------------


def test_a_question_over_the_limits_is_refused_before_any_work(
    engine: DemoModel, trained_adapter: TrainedAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing is decoded, tokenized with the image or generated for a refused question")

    monkeypatch.setattr(engine.model, "generate", no_work)
    monkeypatch.setattr(engine, "prepare", no_work)
    image = str(trained_adapter.image)
    huge = "What color is the circle? " * 40_000  # about 1 MB
    (update,) = list(answer(engine, image, huge, *SETTINGS))
    assert update[-1] == f"⚠️ the question has {len(huge.strip()):,} characters: ask in at most 2,000"
    wordy = "red blue green " * 20  # 300 characters, far more than 8 tokens
    (update,) = list(answer(engine, image, wordy, *SETTINGS, limits=QuestionLimits(chars=2000, tokens=8)))
    assert update[-1].startswith("⚠️ the question has ") and update[-1].endswith(" tokens: ask in at most 8")


def test_the_page_states_the_limits_and_stops_the_generation_of_a_visitor_who_left(engine: DemoModel) -> None:
    limits = QuestionLimits(chars=300, tokens=50)
    app = build_app(engine, [], limits=limits, files_minutes=5)
    (question,) = [block for block in app.blocks.values() if getattr(block, "elem_id", None) == "question"]
    assert question.max_length == 300 and question.info == "Up to 300 characters and 50 tokens."
    assert app.delete_cache == (60, 300)  # gradio deletes the page's files after 5 minutes
    unload = [fn for fn in app.fns.values() if any(target[1] == "unload" for target in fn.targets)]
    assert len(unload) == 1, "leaving the page must reach the generation (Sessions.left)"


def decoder_and_vision_layers(engine: DemoModel) -> list[Any]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [module for module in engine.model.modules() if isinstance(module, GradientCheckpointingLayer)]


def test_a_visitor_who_left_stops_the_prompt_pass_at_its_next_layer(
    engine: DemoModel, trained_adapter: TrainedAdapter
) -> None:
    """A stopping criterion is only asked after a whole token; the prompt's forward pass (minutes for a long one)
    must stop too. The visitor leaves while the first layer is about to run: no layer runs at all."""
    cancel = threading.Event()
    layers = decoder_and_vision_layers(engine)
    finished: list[Any] = []
    handles = [layers[0].register_forward_pre_hook(lambda module, args: cancel.set())]
    handles += [layer.register_forward_hook(lambda module, args, out: finished.append(module)) for layer in layers]
    prepared = engine.prepare(str(trained_adapter.image))
    try:
        chunks = list(engine.stream(prepared, EXAMPLE.question, DEFAULTS, cancel))
    finally:
        for handle in handles:
            handle.remove()
    assert chunks == [] and finished == []
    # Gone before it started: nothing runs; the next visitor is served in full (no hook is left behind).
    assert list(engine.stream(prepared, EXAMPLE.question, DEFAULTS, cancel)) == []
    assert "".join(engine.stream(prepared, EXAMPLE.question, DEFAULTS, threading.Event())) == trained_adapter.response


def test_a_port_in_use_is_one_line_before_the_model_loads(
    tiny_model_dir: Path, trained_adapter: TrainedAdapter, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_loaded(*args: Any) -> None:
        raise AssertionError("the model must not load (minutes for a 7B) when the port is taken")

    monkeypatch.setattr("vcot.demo.app.load_demo_model", not_loaded)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert demo_main(["--model", str(tiny_model_dir), "--adapter", str(trained_adapter.path),
                          "--port", str(port)]) == 1  # another process may free it: a rerun can succeed
    err = capsys.readouterr().err
    assert f"vcot-demo: error: port {port} on 127.0.0.1 is in use (another vcot-demo?)" in err
    assert "Traceback" not in err and "crashed" not in err
    assert demo_main(["--model", str(tiny_model_dir), "--host", "192.0.2.1", "--port", str(port)]) == 2
    assert "--host 192.0.2.1 is not an address of this machine" in capsys.readouterr().err


def test_a_corrupt_adapter_is_one_line_and_exit_2(
    tiny_model_dir: Path, trained_adapter: TrainedAdapter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = shutil.copytree(trained_adapter.path, tmp_path / "broken")
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert demo_main(["--model", str(tiny_model_dir), "--adapter", str(broken), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"vcot-demo: error: adapter {broken} has a corrupt weights file (" in err
    assert "Traceback" not in err and "crashed" not in err


def test_the_server_keeps_its_files_in_a_folder_of_its_own_and_deletes_it_at_exit(
    engine: DemoModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gradio keeps every upload and shown image under GRADIO_TEMP_DIR while it runs (/tmp/gradio by default: a
    pod's 4 GiB /tmp); the server gives it a folder of its own there, with delete_cache set, and removes it."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    monkeypatch.setattr("vcot.demo.app.load_demo_model", lambda *args: engine)
    seen: dict[str, Any] = {}

    def launch(app: Any, **kwargs: Any) -> None:
        folder = Path(os.environ["GRADIO_TEMP_DIR"])
        seen.update(folder=folder, exists=folder.is_dir(), delete_cache=app.delete_cache,
                    cache=[block.GRADIO_CACHE for block in app.blocks.values()][:1])

    monkeypatch.setattr("gradio.Blocks.launch", launch)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    serve(parse_config(DemoConfig, ["--model", "m", "--port", str(port), "--files-minutes", "10"]))
    folder = seen["folder"]
    assert folder.parent == tmp_path and folder.name.startswith("vcot-demo-files-") and seen["exists"]
    assert seen["cache"] == [str(folder)] and seen["delete_cache"] == (60, 600)
    assert not folder.exists(), "the page's files go with the server"
