"""The one place a record becomes a chat: tokenize trains on it, evaluate prompts with it.

An optional system turn (the format's ``system_prompt``), then the user turn: the image (multimodal mode) and
the question with its choices and the instruction (the format's wording); the assistant turn is the record's grounded rationale rendered by the run's :class:`~vcot.grounding.model_format.ModelFormat`
(its frame and box syntax). ``ModelFormat.read`` is the one inverse.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any, Literal

from vcot.grounding.answers import final_answer
from vcot.grounding.model_format import HOUSE, RATIONALE_ROLE, ModelFormat
from vcot.grounding.records import question_mentions

PromptStyle = Literal["cot", "direct"]
PROMPT_STYLES: tuple[PromptStyle, ...] = ("cot", "direct")
DIRECT_INSTRUCTION = "Answer with the answer alone (a word, a number or a short phrase): no reasoning and no boxes."
"""Evaluate's ``--prompt-style direct``: the answer alone, to measure what the grounded reasoning costs or adds."""


def format_choices(choices: Sequence[str]) -> str:
    """
    >>> format_choices(["cat", "dog"])
    '(A) cat\\n(B) dog'
    """
    return "\n".join(f"({string.ascii_uppercase[i]}) {choice}" for i, choice in enumerate(choices))


def question_text(record: dict[str, Any], fmt: ModelFormat = HOUSE, style: PromptStyle = "cot") -> str:
    """The question, its choices when it has some, and the instruction (grounded reasoning, or the answer alone).
    A box a record's question names is shown in the model's frame and syntax, as its rationale's boxes are (a
    record without a size is shown as typed).

    >>> question_text({"question": "Color?"}, style="direct").endswith("no reasoning and no boxes.")
    True
    >>> fmt = ModelFormat.for_family(coords="qwen2.5-absolute", min_pixels=56 * 56, max_pixels=112 * 112)
    >>> record = {"question": "What is in <box>[0, 0, 500, 500]</box>?", "width": 200, "height": 100}
    >>> question_text(record, fmt).split("\\n")[0]
    'What is in <box>[0, 0, 70, 28]</box>?'
    """
    question, width, height = str(record["question"]).strip(), record.get("width"), record.get("height")
    out, cursor = [], 0
    for start, end in [found.span for found in question_mentions(question).boxes] if width and height else []:
        out += [question[cursor:start], fmt.render(question[start:end], int(width), int(height))]
        cursor = end
    parts = ["".join(out) + question[cursor:]]
    if record.get("choices"):
        parts.append("Options:\n" + format_choices(record["choices"]))
    parts.append(fmt.instruction() if style == "cot" else DIRECT_INSTRUCTION)
    return "\n".join(parts)


def build_messages(
    record: dict[str, Any], fmt: ModelFormat = HOUSE, *, with_answer: bool = True, style: PromptStyle = "cot"
) -> list[dict[str, Any]]:
    """The chat for ``record``: a system turn when the format has a ``system_prompt``, a user turn (image +
    question) and, ``with_answer``, the assistant's rationale (in the ``rationale_turn`` layout: an ``Analyzer``
    turn with the rationale, then the assistant's answer). :func:`prompt_turns` is the part before the answer.

    ``text`` mode is the seed's: no image at all in the chat. Evaluate calls this with ``with_answer=False``
    and the chat template's generation prompt (and ``style="direct"`` to ask for the answer alone).

    >>> rec = {"image": "s3://b/x.png", "width": 10, "height": 10, "question": "Q?", "rationale": "R"}
    >>> [m["role"] for m in build_messages(rec)]
    ['user', 'assistant']
    >>> build_messages(rec)[0]["content"][0]
    {'type': 'image', 'image': 's3://b/x.png'}
    """
    user: list[dict[str, Any]] = []
    if fmt.mode == "multimodal":
        user.append({"type": "image", "image": record["image"]})
    user.append({"type": "text", "text": question_text(record, fmt, style)})
    messages: list[dict[str, Any]] = [{"role": "user", "content": user}]
    if fmt.system_prompt:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": fmt.system_prompt}]})
    if with_answer:
        rationale = str(record.get("rationale") or "")
        target = fmt.render(rationale, int(record["width"]), int(record["height"]))
        if fmt.layout == "rationale_turn":
            reasoning, answer = split_rationale(target, record)
            messages.append({"role": RATIONALE_ROLE, "content": [{"type": "text", "text": reasoning}]})
            target = f"Answer: {answer}"
        messages.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
    return messages


def prompt_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leading system and user turns of a chat from :func:`build_messages`: what the model is prompted with.

    >>> [m["role"] for m in prompt_turns([{"role": "system"}, {"role": "user"}, {"role": "assistant"}])]
    ['system', 'user']
    """
    count = 0
    while count < len(messages) and messages[count]["role"] in ("system", "user"):
        count += 1
    return messages[:count]


def split_rationale(text: str, record: dict[str, Any]) -> tuple[str, str]:
    """A rationale's reasoning (before its last ``Answer:``) and answer (after it, else the record's ``answer``).

    >>> split_rationale("The <ref>cup</ref> is red. Answer: red", {})
    ('The <ref>cup</ref> is red.', 'red')
    """
    head, marker, _ = text.rpartition("Answer:")
    answer = final_answer(text) if marker else None
    return (head if marker else text).strip(), answer if answer is not None else str(record.get("answer") or "")


def answer_cue(processor: Any, messages: list[dict[str, Any]]) -> str:
    """``rationale_turn``: the text between a rationale and its answer (the end of the ``Analyzer`` turn and the
    assistant's cue), rendered by the chat template; ``messages`` is the user turn."""
    first, second = "\u2063vcot-a\u2063", "\u2063vcot-b\u2063"
    text = processor.apply_chat_template(
        [
            *messages,
            {"role": RATIONALE_ROLE, "content": [{"type": "text", "text": first}]},
            {"role": "assistant", "content": [{"type": "text", "text": second}]},
        ],
        tokenize=False,
    )
    return text[text.index(first) + len(first) : text.index(second)]


def rationale_turn_problem(processor: Any) -> str | None:
    """Why ``processor``'s chat template cannot hold the ``rationale_turn`` layout, or ``None`` when it can.
    Qwen3-VL's official template renders only system, user, assistant and tool turns: an ``Analyzer`` turn vanishes
    from the text, so no record could be encoded (each failed alone, as an ``encode_error``)."""
    try:
        answer_cue(processor, [{"role": "user", "content": [{"type": "text", "text": "?"}]}])
    except ValueError:
        return f"its chat template drops turns of the {RATIONALE_ROLE} role (it renders only its own roles)"
    return None


def turn_prefix(processor: Any, messages: list[dict[str, Any]], role: str) -> str:
    """The chat rendered up to where a new ``role`` turn's text begins: a generation prompt for any role
    (the chat template's own ``add_generation_prompt`` only cues the assistant)."""
    cue = "\u2063vcot-turn\u2063"
    text = processor.apply_chat_template(
        [*messages, {"role": role, "content": [{"type": "text", "text": cue}]}], tokenize=False
    )
    return text[: text.index(cue)]
