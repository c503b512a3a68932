"""A tiny Qwen2.5-VL or Qwen3-VL built offline in seconds: the model the tests and the local pipeline run on.

It is saved exactly like a hub checkpoint (config, tokenizer, image processor, processor, chat template,
random weights), so every stage loads it through the same code path as the real model. Nothing is
downloaded: the tokenizer is a small byte-level BPE trained here with Qwen's own pre-tokenizer and
special tokens (grounding tokens included), the same for both families, and the chat template is the
family's official one, as TRL ships it.

Build one with ``python -m vcot.dev.tiny_model DEST [--family qwen2.5-vl|qwen3-vl] [--size test|local]`` (or
:func:`build_tiny_model`). Families (:data:`TINY_CONFIGS`): ``qwen2.5-vl``, the default, and ``qwen3-vl``
(16 px patches, DeepStack, interleaved mrope); their processors' facts (patch size, normalization, model type) come
from :data:`vcot.grounding.families.FAMILIES`. Sizes (:data:`TINY_SIZES`): ``test``, the default, keeps the
tests fast; ``local`` (``make local-train``) is large enough to learn the grounded output format from random
weights in a few CPU minutes (docs/bench-train.md).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vcot.grounding.families import DEFAULT_FAMILY, FAMILIES, ModelFamily


TINY_VOCAB_SIZE = 1024


@dataclass(frozen=True)
class TinySize:
    """The shape of a tiny model; every size keeps the real model's structure (mrope, 2x2 merge, ...)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vision_hidden: int = 32
    vision_depth: int = 2
    qwen25_rope_theta: float = 1000000.0
    """Qwen2.5-VL's language-model rope base (the released 1e6 by default). Its mrope gives the width position the
    lowest frequencies of a head: at 1e6 and these head sizes an image token's column turns its rotation by under
    a thousandth of a radian, so the language model cannot tell image columns apart (docs/train.md)."""
    image_patches: int = 8
    """The largest image is this many patches a side (:func:`tiny_pixels`). At 8 (16 image tokens, each a quarter of
    the image a side) GRPO found little to learn below the SFT's boxes; at 16 it gains (docs/train.md)."""

    def pixels(self, family: str) -> tuple[int, int]:
        """The processor's ``min_pixels``, ``max_pixels`` for ``family``: 4x4 patches up to ``image_patches`` a side."""
        patch = FAMILIES[family].patch_size
        return (4 * patch) ** 2, (self.image_patches * patch) ** 2


TINY_SIZES = {
    # ~0.26M parameters (Qwen3-VL: 0.33M): the tests' model, a training step in milliseconds. Too small to learn.
    "test": TinySize(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2),
    # ~1.3M parameters (Qwen3-VL: 1.5M): `make local-train`'s, learns to point in CPU minutes (docs/train.md).
    "local": TinySize(
        hidden=128,
        intermediate=384,
        layers=4,
        heads=4,
        kv_heads=2,
        vision_hidden=64,
        qwen25_rope_theta=10.0,
        image_patches=16,
    ),
}
DEFAULT_SIZE = "test"


def _check_size(size: str) -> None:
    if size not in TINY_SIZES:
        raise ValueError(f"size={size!r} is not one of {', '.join(TINY_SIZES)}")


def _check_family(family: str) -> None:
    if family not in TINY_CONFIGS:
        raise ValueError(f"family={family!r} is not one of {', '.join(TINY_CONFIGS)}")


def tiny_pixels(family: str, size: str = DEFAULT_SIZE) -> tuple[int, int]:
    """The tiny pixel budget of a size: from 4x4 patches up to ``image_patches`` a side (:class:`TinySize`),
    merged 2x2 into image tokens. The test size's largest image is 8x8 patches (16 image tokens: 112 px at
    Qwen2.5-VL's 14 px patches, 128 px at Qwen3-VL's 16 px), the local size's 16x16 (64 image tokens).

    >>> tiny_pixels("qwen2.5-vl"), tiny_pixels("qwen3-vl"), tiny_pixels("qwen2.5-vl", "local")
    ((3136, 12544), (4096, 16384), (3136, 50176))
    """
    _check_size(size)
    _check_family(family)
    return TINY_SIZES[size].pixels(family)


# Qwen2.5-VL's special tokens in the released order; `<|endoftext|>` comes first, as in Qwen. Qwen3-VL has the
# same ones (its config's default image/video/vision ids are Qwen2.5-VL's).
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

    The instruction every prompt carries (``vcot.grounding.model_format``) is in the corpus, so it tokenizes into whole words.
    """
    from vcot.grounding.model_format import COORDS, ModelFormat

    rng = random.Random(seed)
    for index in range(lines):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        ref = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
        x1, y1, x2, y2 = (rng.randint(0, 1000) for _ in range(4))
        yield (
            f"system\nYou are a helpful assistant.\nuser\nassistant\n"  # the chat template's own words
            f"{words.capitalize()}? What color is the {rng.choice(_WORDS)}?\n{ModelFormat.for_family(coords=COORDS[index % 2]).instruction()}\n"
            f"First I find the <ref>{ref}</ref><box>[{x1}, {y1}, {x2}, {y2}]</box> and read the answer there. "
            f"Answer: {rng.choice(_WORDS)}\nOptions: (A) {rng.choice(_WORDS)} (B) {rng.choice(_WORDS)}"
        )


def train_bpe(*, seed: int = 0, vocab_size: int = TINY_VOCAB_SIZE) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE trained on a synthetic corpus with Qwen's pre-tokenizer: its vocabulary and merges."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
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
    return bpe.get_vocab(), merges


def qwen_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Any:
    """A ``Qwen2Tokenizer`` over ``vocab`` and ``merges`` with Qwen's special tokens (appended after ``vocab``'s ids
    unless ``vocab`` already places them) and the Instruct checkpoints' end of turn and padding."""
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",  # as in the Instruct checkpoints: generation stops at the end of the turn
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    return tokenizer


def build_tokenizer(*, seed: int = 0, vocab_size: int = TINY_VOCAB_SIZE) -> Any:
    """A ``Qwen2Tokenizer`` over a byte-level BPE trained on a synthetic corpus with Qwen's pre-tokenizer."""
    return qwen_tokenizer(*train_bpe(seed=seed, vocab_size=vocab_size))


def chat_template(family: str = DEFAULT_FAMILY) -> str:
    """The family's official chat template, as shipped by TRL (no hub needed)."""
    from vcot.models.loading import official_chat_template

    _check_family(family)
    return official_chat_template(FAMILIES[family].model_type)


def build_image_processor(family: str, min_pixels: int, max_pixels: int) -> Any:
    """The PIL image processor both families use, with the released checkpoint's patch and merge sizes and
    normalization (the family's row of :data:`~vcot.grounding.families.FAMILIES`)."""
    from transformers import Qwen2VLImageProcessorPil

    _check_family(family)
    row = FAMILIES[family]
    return Qwen2VLImageProcessorPil(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=row.patch_size,
        merge_size=row.merge_size,
        image_mean=list(row.image_mean),
        image_std=list(row.image_std),
    )


def build_processor(
    *,
    seed: int = 0,
    family: str = DEFAULT_FAMILY,
    size: str = DEFAULT_SIZE,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    tokenizer: Any = None,
) -> Any:
    """Tokenizer + PIL image processor in the family's image-only processor (no torchvision needed).

    The pixel budget defaults to the family's tiny one of ``size`` (:func:`tiny_pixels`); the tokenizer to the tiny
    one of ``seed`` (:func:`build_tokenizer`).
    """
    from vcot.models.loading import IMAGE_ONLY_PROCESSORS

    _check_family(family)
    default_min, default_max = tiny_pixels(family, size)
    image_processor = build_image_processor(family, min_pixels or default_min, max_pixels or default_max)
    return IMAGE_ONLY_PROCESSORS[FAMILIES[family].model_type](
        image_processor=image_processor,
        tokenizer=tokenizer if tokenizer is not None else build_tokenizer(seed=seed),
        chat_template=chat_template(family),
    )


def mrope_section(head_dim: int) -> list[int]:
    """Rotary sections (time, height, width) in the 7B's proportions (16, 24, 24 of 64); they add up to head_dim / 2.

    >>> mrope_section(16), mrope_section(64), mrope_section(128)
    ([2, 3, 3], [8, 12, 12], [16, 24, 24])
    """
    if head_dim % 16:
        raise ValueError(f"head_dim={head_dim} must be a multiple of 16")
    return [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]


def interleaved_mrope_section(head_dim: int) -> list[int]:
    """Qwen3-VL's rotary sections (time, height, width) in its proportions (24, 20, 20 of 64), for its interleaved
    layout (t h w t h w ...: height and width each need fewer than a third of the head_dim / 2 frequencies).

    >>> interleaved_mrope_section(16), interleaved_mrope_section(64), interleaved_mrope_section(128)
    ([4, 2, 2], [12, 10, 10], [24, 20, 20])
    """
    if head_dim % 16:
        raise ValueError(f"head_dim={head_dim} must be a multiple of 16")
    spatial = 5 * head_dim // 32
    return [head_dim // 2 - 2 * spatial, spatial, spatial]


def tiny_config(tokenizer: Any, size: TinySize = TINY_SIZES[DEFAULT_SIZE], family: str = DEFAULT_FAMILY) -> Any:
    """The family's config at ``size``, with every structural feature of the real models."""
    _check_family(family)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    return TINY_CONFIGS[family](len(tokenizer), ids, size, FAMILIES[family])


def _qwen25vl_config(vocab_size: int, ids: dict[str, int], size: TinySize, row: ModelFamily) -> Any:
    """Qwen2.5-VL as the 7B: mrope, windowed vision attention with one full-attention block, 2x2 merge."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": size.hidden,
            "intermediate_size": size.intermediate,
            "num_hidden_layers": size.layers,
            "num_attention_heads": size.heads,
            "num_key_value_heads": size.kv_heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": size.qwen25_rope_theta,
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
            "patch_size": row.patch_size,
            "spatial_merge_size": row.merge_size,
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


def _qwen3vl_config(vocab_size: int, ids: dict[str, int], size: TinySize, row: ModelFamily) -> Any:
    """Qwen3-VL as the 2B-8B: interleaved mrope, q/k norms, 16 px patches with learned (interpolated) position
    embeddings, full vision attention, 2x2 merge, and DeepStack: intermediate vision layers' features added to
    the first language layers' hidden states (the 8B taps 3 of 27; here every vision layer but the last, so the
    tower has one layer more than Qwen2.5-VL's tiny one)."""
    from transformers import Qwen3VLConfig

    head_dim = size.hidden // size.heads
    return Qwen3VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": size.hidden,
            "intermediate_size": size.intermediate,
            "num_hidden_layers": size.layers,
            "num_attention_heads": size.heads,
            "num_key_value_heads": size.kv_heads,
            "head_dim": head_dim,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": interleaved_mrope_section(head_dim),
                "mrope_interleaved": True,
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": size.vision_depth + 1,
            "hidden_size": size.vision_hidden,
            "intermediate_size": 2 * size.vision_hidden,
            "num_heads": 2,
            "out_hidden_size": size.hidden,
            "patch_size": row.patch_size,
            "spatial_merge_size": row.merge_size,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,  # an 8x8 table, interpolated to each image's patch grid (the real: 48x48)
            "deepstack_visual_indexes": list(range(size.vision_depth)),
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


TINY_CONFIGS: dict[str, Callable[[int, dict[str, int], TinySize, ModelFamily], Any]] = {
    "qwen2.5-vl": _qwen25vl_config,
    "qwen3-vl": _qwen3vl_config,
}
"""The families a tiny model can be built of, each with its config builder: the one family-specific part (its
transformers config class and structure); everything else is read from the family's row of ``FAMILIES``."""

TINY_MIN_PIXELS, TINY_MAX_PIXELS = tiny_pixels(DEFAULT_FAMILY, DEFAULT_SIZE)


def build_tiny_model(dest: Path, *, family: str = DEFAULT_FAMILY, seed: int = 0, size: str = DEFAULT_SIZE) -> Path:
    """Write a hub-like tiny model folder at ``dest`` (deterministic for a family, seed and size) and return it.

    ``family`` names one of :data:`TINY_CONFIGS`; ``size`` one of :data:`TINY_SIZES`: ``test`` (the default, fast
    tests) or ``local`` (``make local-train``).
    """
    _check_family(family)
    _check_size(size)
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from vcot.models.loading import save_video_processor_config

    dest = Path(dest)
    processor = build_processor(seed=seed, family=family, size=size)
    config = tiny_config(processor.tokenizer, TINY_SIZES[size], family)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[config.text_config.eos_token_id, config.text_config.bos_token_id],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    save_video_processor_config(processor, dest)  # as a hub folder has: vLLM's processor loader requires it
    (dest / BUILD_CARD).write_text(json.dumps(build_card(family, size, seed)) + "\n", encoding="utf-8")
    return dest


BUILD_CARD = "vcot-tiny.json"
"""Written beside the model: what built it (family, size, seed, a hash of this module), so a stale build is seen."""


def build_card(family: str, size: str, seed: int) -> dict[str, Any]:
    """What a build of ``family``/``size``/``seed`` by this version of the module records."""
    import hashlib

    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return {"family": family, "size": size, "seed": seed, "builder": source}


def is_current(dest: Path, *, family: str = DEFAULT_FAMILY, seed: int = 0, size: str = DEFAULT_SIZE) -> bool:
    """Whether ``dest`` holds exactly what :func:`build_tiny_model` would build now (``make tiny-model`` skips it)."""
    card = Path(dest) / BUILD_CARD
    try:
        return json.loads(card.read_text(encoding="utf-8")) == build_card(family, size, seed)
    except (OSError, ValueError):
        return False


def build_tiny_qwen25vl(dest: Path, *, seed: int = 0, size: str = DEFAULT_SIZE) -> Path:
    """The tiny Qwen2.5-VL: the tests' and the benchmarks' default model."""
    return build_tiny_model(dest, family="qwen2.5-vl", seed=seed, size=size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcot.dev.tiny_model", description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="seed for the tokenizer corpus and the weights")
    parser.add_argument(
        "--family", choices=list(TINY_CONFIGS), default=DEFAULT_FAMILY, help="which model family to build"
    )
    parser.add_argument(
        "--size", choices=sorted(TINY_SIZES), default=DEFAULT_SIZE, help="test: fast tests; local: make local-train"
    )
    parser.add_argument(
        "--keep-current", action="store_true", help="do nothing when DEST already holds this build (same family, "
        "size, seed and builder version); rebuild a stale one"
    )
    args = parser.parse_args(argv)
    if args.keep_current and is_current(args.dest, family=args.family, seed=args.seed, size=args.size):
        return 0
    path = build_tiny_model(args.dest, family=args.family, seed=args.seed, size=args.size)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
