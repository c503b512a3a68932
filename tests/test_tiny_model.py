"""The tiny offline Qwen2.5-VL: loads like a hub checkpoint, with Qwen's tokens, template and processor."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from vcot.modeling import ImageOnlyQwen25VLProcessor
from vcot.tiny_model import QWEN_SPECIAL_TOKENS, TINY_MAX_PIXELS, build_tokenizer


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


def test_sizes_keep_the_structure_and_the_local_one_is_larger() -> None:
    from vcot.tiny_model import TINY_SIZES, build_processor, tiny_config

    processor = build_processor(seed=0)
    counts = {}
    for name, size in TINY_SIZES.items():
        config = tiny_config(processor.tokenizer, size)
        head_dim = size.hidden // size.heads
        assert sum(config.text_config.rope_parameters["mrope_section"]) == head_dim // 2
        model = Qwen2_5_VLForConditionalGeneration._from_config(config)
        counts[name] = sum(p.numel() for p in model.parameters())
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=[Image.new("RGB", (150, 100), "blue")], return_tensors="pt")
        assert torch.isfinite(model(**inputs, labels=inputs["input_ids"]).loss)
    assert counts["test"] < 500_000 < 2_000_000 < counts["local"]


def test_unknown_size_is_refused(tmp_path: Path) -> None:
    import pytest

    from vcot.tiny_model import build_tiny_qwen25vl

    with pytest.raises(ValueError, match="local"):
        build_tiny_qwen25vl(tmp_path / "model", size="huge")


def test_prompt_words_are_whole_tokens(tiny_model_dir: Path) -> None:
    tokenizer = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    for word in ("coordinates", " integers", " region", " answer", " read", " circle", " square"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
