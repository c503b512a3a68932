"""True-width slices of the real models: every width, head count, vocabulary and vision setting of a published
checkpoint, only the depth cut, random weights. What the large recipes run on in ``make test``.

A slice answers the questions a tiny model cannot: do the recipe's LoRA targets match the real module names, does
NF4 quantize the real widths, does the 8-bit optimizer step, does gradient checkpointing run through the real
vision tower, does a 4-bit base merge back for export, and how much memory a step takes (the plan's check, in
``bench/plan_bench.py``). Nothing is downloaded: the configuration is the published one
(:mod:`vcot.models.published`), the processor is the family's released one built offline (its real pixel budget
and normalization), the tokenizer is the tiny model's BPE padded so that Qwen's special tokens sit at their real
ids (151643 ...), and the chat template is the family's official one.

How the depth is cut (:func:`slice_config`): the language model keeps ``layers`` decoder layers (at least one per
DeepStack tap, so every tap still lands); the vision tower keeps ``vision_depth`` blocks, Qwen2.5-VL's pattern of
windowed blocks closed by a full-attention one (the released 7, 15, 23, 31 of 32 become the last block), Qwen3-VL's
DeepStack taps moved onto the first blocks (the released 8, 16, 24 of 27 become 0, 1, 2 of 4).

Build one with ``python -m vcot.dev.model_slice DEST --name qwen2.5-vl-7b`` (or :func:`build_model_slice`).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from vcot.dev.tiny_model import QWEN_SPECIAL_TOKENS, build_processor, qwen_tokenizer, train_bpe
from vcot.grounding.model_format import family_of_model_type
from vcot.models.published import provenance, published_config, published_names, text_config

QWEN_FIRST_SPECIAL_ID = 151643
"""``<|endoftext|>``'s id in every Qwen2.5-VL and Qwen3-VL tokenizer: the specials follow in
:data:`~vcot.dev.tiny_model.QWEN_SPECIAL_TOKENS`'s order."""
SLICE_CARD = "vcot-slice.json"


def slice_config(config: dict[str, Any], *, layers: int = 2, vision_depth: int = 2) -> dict[str, Any]:
    """``config`` (a published ``config.json``) with its depth cut and every other value kept.

    >>> from vcot.models.published import published_config
    >>> cut = slice_config(published_config("qwen2.5-vl-7b"))
    >>> cut["num_hidden_layers"], cut["vision_config"]["depth"], cut["vision_config"]["fullatt_block_indexes"]
    (2, 2, [1])
    >>> cut = slice_config(published_config("qwen3-vl-8b"))
    >>> cut["text_config"]["num_hidden_layers"], cut["vision_config"]["depth"]
    (3, 4)
    >>> cut["vision_config"]["deepstack_visual_indexes"]
    [0, 1, 2]
    """
    cut = copy.deepcopy(config)
    vision = cut["vision_config"]
    taps = len(vision.get("deepstack_visual_indexes") or [])
    text_config(cut)["num_hidden_layers"] = max(layers, taps)
    text_config(cut).pop("max_window_layers", None)
    vision["depth"] = max(vision_depth, taps + 1)
    if "fullatt_block_indexes" in vision:
        vision["fullatt_block_indexes"] = [vision["depth"] - 1]
    if taps:
        vision["deepstack_visual_indexes"] = list(range(taps))
    return cut


def padded_tokenizer(vocab_size: int, *, seed: int = 0) -> Any:
    """The tiny BPE tokenizer with unreachable filler entries before Qwen's special tokens, so that those get
    their real ids (no merge produces a filler: they only occupy ids). ``vocab_size`` bounds the result."""
    vocab, merges = train_bpe(seed=seed)
    vocab.update({f"<|vcot_filler_{index}|>": index for index in range(len(vocab), QWEN_FIRST_SPECIAL_ID)})
    vocab.update({token: QWEN_FIRST_SPECIAL_ID + offset for offset, token in enumerate(QWEN_SPECIAL_TOKENS)})
    tokenizer = qwen_tokenizer(vocab, merges)
    if len(tokenizer) > vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} entries, more than the model's {vocab_size}")
    return tokenizer


def build_card(name: str, seed: int, layers: int, vision_depth: int, device: str = "cpu") -> dict[str, Any]:
    """What a build records beside the model (a stale build is one whose card differs). ``layers=0``: the whole
    model, whatever ``vision_depth``; a GPU draws other weights from the same seed than a CPU, so it is recorded."""
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    card = {"slice_of": name, "seed": seed, "layers": layers, "vision_depth": vision_depth if layers else None,
            "builder": source, "source": provenance(name)["source"]}  # fmt: skip
    return card if device == "cpu" else {**card, "device": device}


def is_current(
    dest: Path, name: str, *, seed: int = 0, layers: int = 2, vision_depth: int = 2, device: str = "cpu"
) -> bool:
    try:
        card = json.loads((Path(dest) / SLICE_CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return card == build_card(name, seed, layers, vision_depth, device)


def build_model_slice(
    dest: Path, name: str, *, seed: int = 0, layers: int = 2, vision_depth: int = 2, device: str = "cpu"
) -> Path:
    """Write a hub-like folder at ``dest``: ``name``'s published configuration cut to ``layers`` decoder layers and
    ``vision_depth`` vision blocks (:func:`slice_config`; ``layers=0``: the whole published model, uncut), random
    bf16 weights, the released processor settings. ``device="cuda"`` draws the weights on a GPU: seconds, where a
    whole 7B takes minutes on a CPU."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

    config = published_config(name)
    if layers:
        config = slice_config(config, layers=layers, vision_depth=vision_depth)
    family = family_of_model_type(config["model_type"])
    with tempfile.TemporaryDirectory() as folder:  # a config.json, read as transformers reads a checkpoint's
        (Path(folder) / "config.json").write_text(json.dumps(config), encoding="utf-8")
        model_config = AutoConfig.from_pretrained(folder)
    tokenizer = padded_tokenizer(model_config.text_config.vocab_size, seed=seed)
    ids = [tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS]
    assert ids == list(range(QWEN_FIRST_SPECIAL_ID, QWEN_FIRST_SPECIAL_ID + len(ids))), ids
    assert ids[QWEN_SPECIAL_TOKENS.index("<|image_pad|>")] == model_config.image_token_id
    torch.manual_seed(seed)
    with torch.device("meta"):  # built without weights: built on the device, every weight would be drawn twice
        model = AutoModelForImageTextToText.from_config(model_config, dtype=torch.bfloat16)
    model.to_empty(device=device)
    model.init_weights()  # one draw of every weight, as from_config's own initialization draws them
    model.generation_config = GenerationConfig(
        bos_token_id=QWEN_FIRST_SPECIAL_ID,
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), QWEN_FIRST_SPECIAL_ID],
        pad_token_id=QWEN_FIRST_SPECIAL_ID,
        do_sample=False,
    )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    build_processor(family=family, tokenizer=tokenizer, **provenance(name)["processor"]).save_pretrained(dest)
    card = build_card(name, seed, layers, vision_depth, device)
    (dest / SLICE_CARD).write_text(json.dumps(card) + "\n", encoding="utf-8")
    return dest


SLICE_CACHE = Path(os.environ.get("VCOT_SLICE_CACHE", Path.home() / ".cache" / "vcot" / "slices")).expanduser()
"""Where the tests and the plan's benchmark keep their slices (``VCOT_SLICE_CACHE``; ~8 GB for the three the tests
use): in the user cache, as vLLM's venv, so that every clone and every run reuses them (building one takes 20-40 s)."""


def cached_slice(name: str, cache: Path = SLICE_CACHE) -> Path:
    """``name``'s default slice under ``cache``, built once and again only when the builder or its source changes."""
    dest = cache / name
    if not is_current(dest, name):
        build_model_slice(dest, name)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcot.dev.model_slice", description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder to write the slice into")
    parser.add_argument("--name", choices=published_names(), required=True, help="the published model to slice")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the tokenizer corpus")
    parser.add_argument("--layers", type=int, default=2,
                        help="decoder layers kept (at least one per DeepStack tap); 0: the whole model, uncut")
    parser.add_argument("--vision-depth", type=int, default=2, help="vision blocks kept")
    parser.add_argument("--device", default="cpu", help="where the random weights are drawn (cuda: a GPU, faster)")
    parser.add_argument("--keep-current", action="store_true", help="do nothing when DEST holds this build already")
    args = parser.parse_args(argv)
    shape = {"seed": args.seed, "layers": args.layers, "vision_depth": args.vision_depth, "device": args.device}
    if not (args.keep_current and is_current(args.dest, args.name, **shape)):
        build_model_slice(args.dest, args.name, **shape)
    print(args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
