"""A tiny Qwen2.5-VL built offline in seconds: the model the tests and the local pipeline run on.

It is saved exactly like a hub checkpoint (config, tokenizer, image processor, processor, chat template,
random weights), so every stage loads it through the same code path as the real 7B model. Nothing is
downloaded: the tokenizer is a small byte-level BPE trained here with Qwen's own pre-tokenizer and
special tokens (grounding tokens included), and the chat template is the official one TRL ships.

Build one with ``python -m vcot.tiny_model DEST [--size test|local]`` (or :func:`build_tiny_qwen25vl`). Sizes
(:data:`TINY_SIZES`): ``test``, the default, keeps the tests fast; ``local`` (``make local-train``) is large
enough to learn the grounded output format from random weights in a few CPU minutes (docs/bench-train.md).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Small images keep CPU training fast: 112x112 px is 8x8 patches of 14 px, merged 2x2 into 16 image tokens.
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 112 * 112
TINY_VOCAB_SIZE = 1024


@dataclass(frozen=True)
class TinySize:
    """The shape of a tiny model; every size keeps the 7B's structure (mrope, windowed vision attention, 2x2 merge)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vision_hidden: int = 32
    vision_depth: int = 2


TINY_SIZES = {
    # ~0.27M parameters: the tests' model, a training step in milliseconds. Too small to learn the format.
    "test": TinySize(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2),
    # ~4M parameters: `make local-train`'s model, learns the grounded output format in a few CPU minutes.
    "local": TinySize(hidden=256, intermediate=768, layers=4, heads=4, kv_heads=2, vision_hidden=64),
}
DEFAULT_SIZE = "test"

# Qwen2.5-VL's special tokens in the released order; `<|endoftext|>` comes first, as in Qwen.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

_WORDS = (
    "the a an of in on at to is are was what which where how many color left right top bottom "
    "first then find look see region object answer question image picture shows there it this that "
    "red green blue yellow black white gray orange purple brown gear cat dog car tree sign window "
    "person man woman table chair book cup bottle text number square circle triangle bar shape small large "
    "because so therefore near above below inside next behind front box ref choose option options read and"
).split()


def _training_corpus(seed: int, lines: int = 4000) -> Iterator[str]:
    """Sentences shaped like our prompts and grounded rationales, so their common pieces get merged.

    The instruction every prompt carries (``vcot.model_format``) is in the corpus, so it tokenizes into whole words.
    """
    from vcot.model_format import COORDS, ModelFormat

    rng = random.Random(seed)
    for index in range(lines):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        ref = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
        x1, y1, x2, y2 = (rng.randint(0, 1000) for _ in range(4))
        yield (
            f"{words.capitalize()}? What color is the {rng.choice(_WORDS)}?\n{ModelFormat.for_family(coords=COORDS[index % 2]).instruction()}\n"
            f"First I find the <ref>{ref}</ref><box>[{x1}, {y1}, {x2}, {y2}]</box> and read the answer there. "
            f"Answer: {rng.choice(_WORDS)}\nOptions: (A) {rng.choice(_WORDS)} (B) {rng.choice(_WORDS)}"
        )


def build_tokenizer(*, seed: int = 0, vocab_size: int = TINY_VOCAB_SIZE) -> Any:
    """A ``Qwen2Tokenizer`` over a byte-level BPE trained on a synthetic corpus with Qwen's pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_training_corpus(seed), trainer=trainer)
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe.get_vocab(),
        merges=merges,
        eos_token="<|im_end|>",  # as in the Instruct checkpoints: generation stops at the end of the turn
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    return tokenizer


def chat_template() -> str:
    """The official Qwen2.5-VL chat template, as shipped by TRL (no hub needed)."""
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl.jinja").read_text(encoding="utf-8")


def build_processor(*, seed: int = 0, min_pixels: int = TINY_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS) -> Any:
    """Tokenizer + PIL image processor in the image-only processor (no torchvision needed)."""
    from transformers import Qwen2VLImageProcessorPil

    from vcot.modeling import ImageOnlyQwen25VLProcessor

    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    return ImageOnlyQwen25VLProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(seed=seed), chat_template=chat_template()
    )


def mrope_section(head_dim: int) -> list[int]:
    """Rotary sections (time, height, width) in the 7B's proportions (16, 24, 24 of 64); they add up to head_dim / 2.

    >>> mrope_section(16), mrope_section(64), mrope_section(128)
    ([2, 3, 3], [8, 12, 12], [16, 24, 24])
    """
    if head_dim % 16:
        raise ValueError(f"head_dim={head_dim} must be a multiple of 16")
    return [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]


def tiny_config(tokenizer: Any, size: TinySize = TINY_SIZES[DEFAULT_SIZE]) -> Any:
    """A Qwen2.5-VL config with every structural feature of the 7B (mrope, windowed vision attention, 2x2 merge)."""
    from transformers import Qwen2_5_VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": size.hidden,
            "intermediate_size": size.intermediate,
            "num_hidden_layers": size.layers,
            "num_attention_heads": size.heads,
            "num_key_value_heads": size.kv_heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": mrope_section(size.hidden // size.heads),
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": size.vision_depth,
            "hidden_size": size.vision_hidden,
            "intermediate_size": 2 * size.vision_hidden,
            "num_heads": 2,
            "out_hidden_size": size.hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [size.vision_depth - 1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny_qwen25vl(dest: Path, *, seed: int = 0, size: str = DEFAULT_SIZE) -> Path:
    """Write a hub-like tiny Qwen2.5-VL folder at ``dest`` (deterministic for a seed and size) and return it.

    ``size`` names one of :data:`TINY_SIZES`: ``test`` (the default, fast tests) or ``local`` (``make local-train``).
    """
    if size not in TINY_SIZES:
        raise ValueError(f"size={size!r} is not one of {', '.join(TINY_SIZES)}")
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    dest = Path(dest)
    processor = build_processor(seed=seed)
    config = tiny_config(processor.tokenizer, TINY_SIZES[size])
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[config.text_config.eos_token_id, config.text_config.bos_token_id],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcot.tiny_model", description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="seed for the tokenizer corpus and the weights")
    parser.add_argument(
        "--size", choices=sorted(TINY_SIZES), default=DEFAULT_SIZE, help="test: fast tests; local: make local-train"
    )
    args = parser.parse_args(argv)
    path = build_tiny_qwen25vl(args.dest, seed=args.seed, size=args.size)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
