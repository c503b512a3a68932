"""The exported model's README.md: what a user of the model (vLLM, transformers, the hub) must know to get boxes
right. Built from what the run recorded, never typed by hand: the base model and model format from
``vcot-model.json``, the lineage from the run's ``_SUCCESS``, the metrics from its ``metrics.json`` (and the
evaluate output beside the run when there is one), the prompt from :func:`vcot.grounding.prompts.build_messages`.
"""

from __future__ import annotations

import re
from typing import Any

from vcot.grounding.boxes import BOX_TAGS, JSON_BOX_KEY, BoxFormat
from vcot.grounding.model_format import RATIONALE_ROLE, ModelFormat
from vcot.grounding.prompts import build_messages, prompt_turns, turn_prefix

EXAMPLE = {"image": "image.png", "width": 640, "height": 480, "question": "What color is the car on the left?"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

CONVENTIONS = {
    "norm1000": (
        "**norm1000**: every box is `[x1, y1, x2, y2]`, integers 0-1000 relative to the width and height of the "
        "*original* image (whatever size the processor resizes it to). Pixels of the original image: "
        "`x = x1 / 1000 * width`, `y = y1 / 1000 * height`."
    ),
    "qwen2.5-absolute": (
        "**qwen2.5-absolute**: every box is `[x1, y1, x2, y2]` in absolute pixels of the image *as the processor "
        "resizes it* (`smart_resize`: sides rounded to multiples of {factor} within {min_pixels}-{max_pixels} "
        "pixels). Pixels of the original image: `x = x1 * width / resized_width`, `y = y1 * height / resized_height`."
    ),
}

READ_BACK = '''```python
import math, re

BOX = re.compile({pattern!r})
{resize}

def boxes_in_pixels(text, width, height):
    """The response's boxes as (x1, y1, x2, y2) pixels of the original width x height image."""
    {scale}
    return [(x1 * sx, y1 * sy, x2 * sx, y2 * sy) for x1, y1, x2, y2 in (map(int, m) for m in BOX.findall(text))]
```'''

SMART_RESIZE = '''

def smart_resize(height, width, factor={factor}, min_pixels={min_pixels}, max_pixels={max_pixels}):
    """(height, width) of the image as the processor resizes it."""
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = max(factor, math.floor(height / beta / factor) * factor), max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w
'''

_XYXY = r"\[\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\s*\]"
_PAIRS = r"\((\d+),\s*(\d+)\),\s*\((\d+),\s*(\d+)\)"


def box_pattern(box_syntax: BoxFormat) -> str:
    """The regex the card's snippet finds a box with (groups x1, y1, x2, y2), from the one tag table.

    >>> [re.search(box_pattern(s), text).groups() for s, text in [("house", "<box>[1, 2, 3, 4]</box>"),
    ...     ("qwen", "<|box_start|>(1,2),(3,4)<|box_end|>"), ("json", '{"bbox_2d": [1, 2, 3, 4]}')]]
    [('1', '2', '3', '4'), ('1', '2', '3', '4'), ('1', '2', '3', '4')]
    """
    if box_syntax == "json":
        return rf'"{JSON_BOX_KEY}"\s*:\s*{_XYXY}'
    tags = BOX_TAGS[box_syntax]
    if box_syntax == "qwen":
        return re.escape(tags.box_open) + _PAIRS + re.escape(tags.box_close)
    return rf"{re.escape(tags.box_open)}\s*{_XYXY}\s*{re.escape(tags.box_close)}"


SCALES = {
    "norm1000": "sx, sy = width / 1000, height / 1000",
    "qwen2.5-absolute": "resized_h, resized_w = smart_resize(height, width)\n    sx, sy = width / resized_w, height / resized_h",
}


def read_back(fmt: ModelFormat) -> str:
    """A self-contained Python snippet that reads this model's boxes as pixels of the original image."""
    vision = fmt.vision
    resize = SMART_RESIZE.format(factor=vision.factor, min_pixels=vision.min_pixels, max_pixels=vision.max_pixels)
    return READ_BACK.format(
        pattern=box_pattern(fmt.box_syntax),
        resize=resize if fmt.coords == "qwen2.5-absolute" else "",
        scale=SCALES[fmt.coords],
    )


def is_hub_id(name: str) -> bool:
    """
    >>> is_hub_id("Qwen/Qwen2.5-VL-7B-Instruct"), is_hub_id("s3://b/models/qwen"), is_hub_id("/models/qwen")
    (True, False, False)
    """
    return bool(_HUB_ID.match(name))


def lineage_lines(inputs: list[dict[str, Any]], depth: int = 0) -> list[str]:
    """The run's inputs as a nested Markdown list: stage, URI and code version, down to the raw data."""
    lines: list[str] = []
    for item in inputs:
        stage = item.get("stage") or "source data"
        version = f" ({item['code_version']})" if item.get("code_version") else ""
        lines.append(f"{'  ' * depth}- {stage}: `{item.get('uri')}`{version}")
        lines += lineage_lines(item.get("inputs") or [], depth + 1)
    return lines


def exact_prompt(processor: Any, fmt: ModelFormat) -> str:
    """The text the chat template makes of an example question (the image's tokens collapsed to one), cued where
    the model starts writing: the assistant turn, or for a ``rationale_turn`` model its own reasoning turn."""
    messages = build_messages(EXAMPLE, fmt, with_answer=False)
    if fmt.layout == "rationale_turn":
        return turn_prefix(processor, prompt_turns(messages), RATIONALE_ROLE)
    return str(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def turns_note(fmt: ModelFormat) -> str:
    """How a generation goes: one assistant turn, or (``rationale_turn``, LaCoT's layout) two calls."""
    if fmt.layout != "rationale_turn":
        return "Through this folder's chat template, with the generation prompt (the image's tokens are expanded by the processor):"
    return (
        f"This model reasons in a turn of its own, role `{RATIONALE_ROLE}`, then answers in the assistant turn. "
        f"Generate twice: from the prompt below (cued at the `{RATIONALE_ROLE}` turn) until its end-of-turn token, "
        "then append that turn and the chat template's generation prompt and generate `Answer: ...`. A chat endpoint "
        "cannot cue a custom role: use transformers, or a completions endpoint with this text (the image's tokens "
        "are expanded by the processor):"
    )


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_table(train: dict[str, Any], evaluation: dict[str, Any] | None) -> list[str]:
    """The run's steps, the metric that chose its checkpoint (``best_metric``) and its final eval loss, then the
    evaluation's key numbers.

    >>> metrics_table({"global_step": 9, "best_metric": {"name": "eval_gen_first_object_iou", "value": 0.5, "step": 8},
    ...                "eval": {"eval_loss": 0.25}}, None)[2:]
    ['| training steps | 9 |', '| best eval_gen_first_object_iou (step 8) | 0.5000 |', '| final eval_loss | 0.2500 |']
    """
    best = train.get("best_metric") or {}
    rows = [("training steps", train.get("global_step"))]
    if best.get("name"):
        rows.append((f"best {best['name']} (step {best.get('step')})", best.get("value")))
    rows.append(("final eval_loss", (train.get("eval") or {}).get("eval_loss")))
    overall = (evaluation or {}).get("overall") or {}
    for name in ("samples", "box_detection_rate", "mean_iou", "acc_at_50", "answer_accuracy"):
        if name in overall:
            rows.append((f"evaluate: {name}", overall[name]))
    return ["| metric | value |", "| --- | --- |", *(f"| {n} | {_number(v)} |" for n, v in rows if v is not None)]


def model_card(
    *,
    card: dict[str, Any],
    run: str,
    run_manifest: dict[str, Any],
    train_metrics: dict[str, Any],
    evaluation: dict[str, Any] | None,
    evaluation_uri: str | None,
    processor: Any,
    dtype: str,
) -> str:
    """README.md of the exported model (front matter the hub reads, then the sections a user needs)."""
    # Not split: its length is the card's text, one list of lines in the order a reader sees them.
    fmt = ModelFormat.from_dict(card)
    base = str(card.get("base_model") or "")
    vision = fmt.vision
    geometry = {"factor": vision.factor, "min_pixels": vision.min_pixels, "max_pixels": vision.max_pixels}
    front = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text", "tags: [vcot, grounding, visual-cot]"]
    if is_hub_id(base):
        front.append(f"base_model: {base}")
    front.append("---")
    metrics_source = f"`{run}/metrics.json`" + (f" and `{evaluation_uri}/metrics.json`" if evaluation_uri else "")
    sections = [
        *front,
        "",
        f"# Grounded chain-of-thought model ({fmt.family})",
        "",
        f"`{base}` fine-tuned by vcot to reason in grounded chains of thought, with the adapter of the run "
        f"`{run}` merged in ({dtype}). It answers a question about an image by naming the regions it relies on "
        "with boxes, then `Answer: ...`.",
        "",
        "## Model",
        "",
        f"- base model: `{base}`",
        f"- family: {fmt.family}; prompt mode: {fmt.mode}; box syntax: {fmt.box_syntax}; coordinates: {fmt.coords}",
        f"- image budget: {vision.min_pixels}-{vision.max_pixels} pixels, patch {vision.patch_size}, "
        f"merge {vision.merge_size} (the processor saved here is set to it)",
        "- `vcot-model.json`: the same facts as JSON (what `vcot-evaluate` reads)",
        "",
        "## Coordinate convention",
        "",
        CONVENTIONS[fmt.coords].format(**geometry),
        "",
        "## The exact prompt",
        "",
        "The user turn is the image, then the question, its options (when it has some, as `Options:` and "
        "`(A) ...` lines) and this instruction, word for word:",
        "",
        f"    {fmt.instruction()}",
        "",
        turns_note(fmt),
        "",
        "```text",
        exact_prompt(processor, fmt).rstrip("\n"),
        "```",
        "",
        "Decode greedily; a repetition penalty must spare coordinate digits (vcot's box-aware penalty), a plain "
        "one lowers box accuracy.",
        "",
        "## How to read boxes back",
        "",
        read_back(fmt),
        "",
        "Or with vcot: `ModelFormat.from_dict(json.load(open('vcot-model.json'))).read(text, width, height)` "
        "(boxes in norm1000 of the original image).",
        "",
        "## Metrics",
        "",
        f"From {metrics_source}:",
        "",
        *metrics_table(train_metrics, evaluation),
        "",
        "## Data lineage",
        "",
        f"- train: `{run}` ({run_manifest.get('code_version')})",
        *lineage_lines(run_manifest.get("inputs") or [], 1),
        "",
    ]
    return "\n".join(sections)
