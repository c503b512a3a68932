"""The tiny offline Qwen2.5-VL and Qwen3-VL: load like hub checkpoints, with Qwen's tokens, templates and processors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
)

from vcot.dev.tiny_model import QWEN_SPECIAL_TOKENS, TINY_MAX_PIXELS, TINY_SIZES, build_tokenizer
from vcot.models.loading import ImageOnlyQwen3VLProcessor, ImageOnlyQwen25VLProcessor


def test_auto_processor_returns_the_image_only_processor(tiny_model_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert isinstance(processor, ImageOnlyQwen25VLProcessor)
    assert processor.image_processor.size.longest_edge == TINY_MAX_PIXELS
    assert processor.tokenizer.eos_token == "<|im_end|>"


def test_special_tokens_are_single_tokens(tiny_model_dir: Path) -> None:
    tokenizer = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    for token in QWEN_SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token
    text = "First <ref>red gear</ref><box>[100, 200, 300, 400]</box>. Answer: 12 ü"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_chat_template_is_qwens(tiny_model_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Answer: red"}]},
    ]
    assert processor.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What?<|im_end|>\n"
        "<|im_start|>assistant\nAnswer: red<|im_end|>\n"
    )


def test_model_runs_on_an_image_and_generates(tiny_model_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.new("RGB", (200, 150), "red")], return_tensors="pt")
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    assert torch.isfinite(loss)
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_tokenizer_is_deterministic_for_a_seed() -> None:
    assert build_tokenizer(seed=0).get_vocab() == build_tokenizer(seed=0).get_vocab()


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_sizes_keep_the_structure_and_the_local_one_is_larger(family: str) -> None:
    from vcot.dev.tiny_model import build_processor, tiny_config

    processor = build_processor(seed=0, family=family)
    counts = {}
    for name, size in TINY_SIZES.items():
        config = tiny_config(processor.tokenizer, size, family)
        head_dim = size.hidden // size.heads
        assert sum(config.text_config.rope_parameters["mrope_section"]) == head_dim // 2
        model = AutoModelForImageTextToText.from_config(config)
        counts[name] = sum(p.numel() for p in model.parameters())
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=[Image.new("RGB", (150, 100), "blue")], return_tensors="pt")
        assert torch.isfinite(model(**inputs, labels=inputs["input_ids"]).loss)
    assert counts["test"] < 500_000 < 1_000_000 < counts["local"] < 2_000_000


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_the_local_size_sees_a_large_image_in_four_times_the_image_tokens(family: str, tmp_path: Path) -> None:
    """`make local-train`'s model gets 16x16 patches (64 image tokens) where the tests' gets 8x8 (docs/train.md), and
    its folder keeps that budget."""
    from vcot.dev.tiny_model import build_processor, build_tiny_model, tiny_pixels

    image = Image.new("RGB", (256, 256), "blue")
    merged = {}
    for size in ("test", "local"):
        processor = build_processor(seed=0, family=family, size=size).image_processor
        grid = processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
        merged[size] = int(grid.prod()) // processor.merge_size**2
    assert merged == {"test": 16, "local": 64}
    saved = AutoProcessor.from_pretrained(build_tiny_model(tmp_path / "local", family=family, size="local"))
    assert saved.image_processor.size.longest_edge == tiny_pixels(family, "local")[1]


def test_unknown_size_or_family_is_refused(tmp_path: Path) -> None:
    from vcot.dev.tiny_model import build_processor, build_tiny_model, tiny_pixels

    with pytest.raises(ValueError, match="local"):
        build_tiny_model(tmp_path / "model", size="huge")
    with pytest.raises(ValueError, match="local"):
        build_processor(size="huge")
    with pytest.raises(ValueError, match="qwen3-vl"):
        build_tiny_model(tmp_path / "model", family="qwen4-vl")
    with pytest.raises(ValueError, match="qwen3-vl"):
        tiny_pixels("qwen4-vl")


def test_prompt_words_are_whole_tokens(tiny_model_dir: Path) -> None:
    tokenizer = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    for word in ("coordinates", " integers", " region", " answer", " read", " circle", " square"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word


# --------------------------------------------------------------------------------------------------
# The second family: Qwen3-VL
# --------------------------------------------------------------------------------------------------

USER_AND_ASSISTANT = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Answer: red"}]},
]


def test_qwen3vl_folder_loads_as_qwen3vl_with_its_image_only_processor(tiny_qwen3vl_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_qwen3vl_dir)
    assert isinstance(processor, ImageOnlyQwen3VLProcessor)
    image_processor = processor.image_processor
    assert (image_processor.patch_size, image_processor.merge_size) == (16, 2)
    assert (image_processor.size.shortest_edge, image_processor.size.longest_edge) == (64 * 64, 128 * 128)
    assert list(image_processor.image_mean) == list(image_processor.image_std) == [0.5, 0.5, 0.5]
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3vl_dir)
    assert type(model) is Qwen3VLForConditionalGeneration and model.config.text_config.model_type == "qwen3_vl_text"
    visual = model.model.visual
    assert visual.deepstack_visual_indexes == [0, 1] and len(visual.deepstack_merger_list) == 2
    assert len(visual.blocks) == 3 and model.config.text_config.rope_parameters["mrope_interleaved"]


def test_qwen3vl_tokens_and_chat_template_are_qwen3vls(tiny_qwen3vl_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_qwen3vl_dir)
    for token in QWEN_SPECIAL_TOKENS:
        ids = processor.tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and processor.tokenizer.convert_ids_to_tokens(ids[0]) == token
    # Unlike Qwen2.5-VL's, Qwen3-VL's template adds no default system turn.
    assert processor.apply_chat_template(USER_AND_ASSISTANT, tokenize=False) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What?<|im_end|>\n"
        "<|im_start|>assistant\nAnswer: red<|im_end|>\n"
    )
    prompt = processor.apply_chat_template(USER_AND_ASSISTANT[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_qwen3vl_runs_on_an_image_and_generates(tiny_qwen3vl_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_qwen3vl_dir)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_qwen3vl_dir)
    text = processor.apply_chat_template(USER_AND_ASSISTANT[:1], tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.new("RGB", (200, 150), "red")], return_tensors="pt")
    # 200x150 px: resized to 128x96 (multiples of 32 within 128*128 px), 8x6 patches of 16 px, 12 image tokens
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 8]]
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 12
    assert torch.isfinite(model(**inputs, labels=inputs["input_ids"]).loss)
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_cli_builds_the_chosen_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from vcot.dev.tiny_model import main

    assert main([str(tmp_path / "m"), "--family", "qwen3-vl"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "qwen3_vl"


def test_keep_current_skips_only_the_same_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`make tiny-model` reuses a folder only when this builder made it with the same family, size and seed."""
    import json

    from vcot.dev.tiny_model import BUILD_CARD, main

    dest = tmp_path / "m"
    assert main([str(dest), "--keep-current"]) == 0 and capsys.readouterr().out.strip() == str(dest)
    assert main([str(dest), "--keep-current"]) == 0 and capsys.readouterr().out == ""  # current: kept
    card = json.loads((dest / BUILD_CARD).read_text())
    (dest / BUILD_CARD).write_text(json.dumps({**card, "builder": "an older vcot"}))
    assert main([str(dest), "--keep-current"]) == 0 and capsys.readouterr().out.strip() == str(dest)  # stale: rebuilt
    assert main([str(dest), "--keep-current", "--family", "qwen3-vl"]) == 0 and capsys.readouterr().out.strip()
    assert json.loads((dest / "config.json").read_text())["model_type"] == "qwen3_vl"
