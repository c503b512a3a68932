"""GRPO rewards for grounded reasoning, with TRL's signature ``f(completions, **columns) -> list[float | None]``.

A completion is a plain string or a conversational list (``[{"role": "assistant", "content": "..."}]``); both
score the same. TRL passes every dataset column as a list with one value per completion; the rewards read
``answer`` (with ``choices`` / ``answer_index`` for multiple choice), ``objects`` (``[{"ref", "box"}]``, house
frame) and ``width`` / ``height``, and ignore the rest (``prompts``, ``completion_ids``, ``trainer_state``, ...).

- :func:`format_reward`: 1 for at least one ``<ref>..</ref><box>[..]</box>``, every box tag usable, and
  ``Answer: ...`` on the last line.
- :func:`accuracy_reward`: 1 when the text after the last ``Answer:`` is the record's answer (:mod:`vcot.grounding.answers`).
- :func:`bbox_reward`: the optimal one-to-one assignment's total IoU over max(#predicted, #truth): flooding,
  repeated and extra boxes cost; a box tag that does not parse is a prediction with IoU 0.
- :func:`dual_iou_reward`: TreeVGR's (mean best IoU per truth + mean best IoU per prediction) / 2.

Boxes are read in the house frame (0-1000 of the original image), or, given the run's ``model_format``
(:class:`vcot.grounding.model_format.ModelFormat`), through its one inverse ``read(text, width, height)``, which maps the
model's own frame and syntax (e.g. Qwen2.5-VL's resized-image pixels) to the house frame before scoring.

Bad input never raises. A completion that is empty, or whose boxes do not parse, is the policy's fault and
scores 0. A record without usable ground truth (no answer, no or broken objects, a bad size) makes that
reward ``None`` for it: TRL's "not applicable", left out of the weighted sum; a completion for which every
reward is ``None`` is unscorable and TRL gives it advantage 0. A reward that comes out non-finite (NaN/inf)
is turned into ``None`` the same way by :func:`guarded`: a broken value must neither reward nor punish the
policy, and NaN would otherwise turn into 0 in TRL's ``nansum`` and leak into our own averages. Every such
case is counted per batch through TRL's ``log_metric`` (``problems/<reward>/<kind>``: the fraction of the
batch), so a run shows how often it happens instead of failing or hiding it.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vcot.errors import ConfigError, VcotError
from vcot.grounding import answers
from vcot.grounding.boxes import (
    BOX_TAGS,
    IntBox,
    ParseResult,
    best_match,
    match_optimal,
    parse_grounded,
    validate_box,
)
from vcot.grounding.model_format import ModelFormat

Completion = str | list[dict[str, Any]]
RewardFunc = Callable[..., list[float | None]]
LogMetric = Callable[[str, float], None]

PROBLEM_KINDS = ("empty", "unparsable_box", "bad_record")
"""What each reward counts per batch: an empty completion, one with a box tag that does not parse, a record
without usable ground truth (its reward is ``None``)."""


def completion_text(completion: Completion) -> str:
    """The text of a completion: a string as is, a conversation's assistant contents joined by newlines.

    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "Answer: 2"}]}])
    'Answer: 2'
    """
    if isinstance(completion, str):
        return completion
    parts: list[str] = []
    for message in completion if isinstance(completion, list) else []:
        if not isinstance(message, dict) or message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(b.get("text") or "" for b in content if isinstance(b, dict) and b.get("type") == "text")
    return "\n".join(parts)


@dataclass(frozen=True)
class Mentions:
    """The grounding in one completion: its usable boxes (house frame), their refs, and how many box tags
    did not parse (wrong arity, not numbers, out of range, inverted, unclosed)."""

    boxes: list[IntBox]
    refs: list[str | None]
    unparsable: int

    @property
    def predicted(self) -> int:
        return len(self.boxes) + self.unparsable


def read_mentions(
    text: str, width: Any = None, height: Any = None, model_format: ModelFormat | None = None
) -> Mentions:
    """Every box tag in ``text``, in the house frame (``model_format=None``) or mapped from the model's frame.

    ``ModelFormat.read`` raises ``ValueError``/``TypeError`` for a size it cannot map (the caller's ``bad_record``).

    >>> read_mentions("<ref>a</ref><box>[1, 2, 3, 4]</box> <box>[9, 9, 1, 1]</box> <box>[5, 6")
    Mentions(boxes=[(1, 2, 3, 4)], refs=['a'], unparsable=2)
    >>> read_mentions("<obj>a</obj><bbox>[5, 6", 100, 100, ModelFormat.for_family(box_syntax="obj")).unparsable
    1
    """
    if model_format is None:
        parsed = parse_grounded(text)
    else:
        parsed = model_format.read(text, int(width), int(height))  # the one inverse
    tags = BOX_TAGS.get(model_format.box_syntax if model_format else "house")
    opened = text.count(tags.box_open) if tags else 0  # json has no tag to leave open
    return _mentions(parsed, unclosed=max(0, opened - len(parsed.boxes) - len(parsed.invalid)))


def _mentions(parsed: ParseResult, unclosed: int) -> Mentions:
    usable = [b for b in parsed.boxes if validate_box(b.box) is None]  # a mapped box could be NaN or off the image
    bad = len(parsed.boxes) - len(usable) + len(parsed.invalid) + unclosed
    return Mentions([b.box for b in usable], [b.ref for b in usable], bad)


def _at(column: Sequence[Any] | None, index: int) -> Any:
    """One completion's value of a TRL column (a list per completion), ``None`` when the column is absent."""
    return column[index] if isinstance(column, (list, tuple)) and index < len(column) else None


def _require(column: Any, name: str, reward: str) -> None:
    if column is None:
        raise VcotError(f"{reward} needs the records' {name!r} column: keep it in the GRPO dataset")


def _require_size(width: Any, height: Any, model_format: ModelFormat | None, reward: str) -> None:
    """A model's own frame is mapped with the record's size: both columns must be there."""
    if model_format is not None:
        _require(width, "width", reward)
        _require(height, "height", reward)


def _report(
    reward: str, counts: Counter[str], total: int, log_metric: LogMetric | None, kinds: Sequence[str] = PROBLEM_KINDS
) -> None:
    """Log each problem kind's share of the batch (every kind, every batch, so TRL's averages stay unbiased)."""
    if log_metric is None or total == 0:
        return
    for kind in kinds:
        log_metric(f"problems/{reward}/{kind}", counts[kind] / total)


def _ends_with_answer(text: str) -> bool:
    """Whether the last line carries ``Answer:`` with an answer after it (``... there. Answer: window`` too)."""
    lines = text.strip().splitlines()
    final = answers.final_answer(lines[-1]) if lines else None
    return bool(final)


def format_reward(
    completions: Sequence[Completion],
    *,
    width: Sequence[Any] | None = None,
    height: Sequence[Any] | None = None,
    model_format: ModelFormat | None = None,
    log_metric: LogMetric | None = None,
    **_: Any,
) -> list[float | None]:
    """1.0 for a grounded completion in the expected shape, else 0.0 (why: RL starts from a usable format).

    >>> format_reward(["The <ref>cat</ref><box>[1, 2, 30, 40]</box> sits.\\nAnswer: cat", "Answer: cat"])
    [1.0, 0.0]
    """
    _require_size(width, height, model_format, "format_reward")
    counts: Counter[str] = Counter()
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        text = completion_text(completion)
        counts["empty"] += not text.strip()
        try:
            found = read_mentions(text, _at(width, i), _at(height, i), model_format)
        except (ValueError, TypeError):  # the record's size does not fit the model's frame
            counts["bad_record"] += 1
            rewards.append(None)
            continue
        counts["unparsable_box"] += found.unparsable > 0
        good = any(found.refs) and found.unparsable == 0 and _ends_with_answer(text)
        rewards.append(1.0 if good else 0.0)
    _report("format_reward", counts, len(rewards), log_metric)
    return rewards


def accuracy_reward(
    completions: Sequence[Completion],
    *,
    answer: Sequence[Any] | None = None,
    choices: Sequence[Any] | None = None,
    answer_index: Sequence[Any] | None = None,
    log_metric: LogMetric | None = None,
    **_: Any,
) -> list[float | None]:
    """1.0 when the text after the last ``Answer:`` is the record's answer, normalized as evaluate scores it.

    For multiple choice the letter, the letter with the text, or the choice text count. No ``Answer:`` is 0.0
    (no last-line fallback: the marker is part of what is learned).

    >>> accuracy_reward(["so. Answer: The Cat!", "Answer: (B)", "cat"], answer=["cat"] * 3,
    ...                 choices=[["dog", "cat"]] * 3, answer_index=[1] * 3)
    [1.0, 1.0, 0.0]
    """
    _require(answer, "answer", "accuracy_reward")
    counts: Counter[str] = Counter()
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        text = completion_text(completion)
        counts["empty"] += not text.strip()
        record = _answer_record(_at(answer, i), _at(choices, i), _at(answer_index, i))
        if record is None:
            counts["bad_record"] += 1
            rewards.append(None)
            continue
        final = answers.final_answer(text)
        rewards.append(1.0 if final is not None and answers.answer_matches(final, record) else 0.0)
    _report("accuracy_reward", counts, len(rewards), log_metric, kinds=("empty", "bad_record"))
    return rewards


def _answer_record(answer: Any, choices: Any, answer_index: Any) -> dict[str, Any] | None:
    """The fields :func:`vcot.grounding.answers.answer_matches` reads; ``None`` when there is no truth to compare with."""
    truth = str(answer or "").strip()
    choices = list(choices) if isinstance(choices, (list, tuple)) and choices else None
    if choices and isinstance(answer_index, int) and 0 <= answer_index < len(choices):
        return {"answer": truth, "choices": choices, "answer_index": answer_index}
    if not answers.normalize_answer(truth):
        return None
    return {"answer": truth, "choices": choices} if choices else {"answer": truth}


def _truth_boxes(objects: Any) -> list[IntBox] | None:
    """The record's ground-truth boxes; ``None`` when there are none or one is not a valid house box."""
    if not isinstance(objects, (list, tuple)) or not objects:
        return None
    boxes: list[IntBox] = []
    for item in objects:
        box = item.get("box") if isinstance(item, dict) else None
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            return None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box) or validate_box(box):
            return None
        boxes.append(tuple(box))  # type: ignore[arg-type]
    return boxes


def assignment_score(found: Mentions, truths: Sequence[IntBox]) -> float:
    """Total IoU of the optimal one-to-one assignment over max(#predicted, #truth); 0.0 without a box."""
    if not found.predicted:
        return 0.0
    total = sum(value for _, _, value in match_optimal(found.boxes, truths))
    return total / max(found.predicted, len(truths))


def dual_iou_score(found: Mentions, truths: Sequence[IntBox]) -> float:
    """TreeVGR: half of (mean best IoU per truth + mean best IoU per prediction); 0.0 without a box."""
    if not found.predicted:
        return 0.0
    recall = sum(best_match(truth, found.boxes)[1] if found.boxes else 0.0 for truth in truths) / len(truths)
    precision = sum(best_match(box, truths)[1] for box in found.boxes) / found.predicted
    return (recall + precision) / 2


def _box_rewards(
    name: str,
    score: Callable[[Mentions, Sequence[IntBox]], float],
    completions: Sequence[Completion],
    objects: Sequence[Any] | None,
    width: Sequence[Any] | None,
    height: Sequence[Any] | None,
    model_format: ModelFormat | None,
    log_metric: LogMetric | None,
) -> list[float | None]:
    _require(objects, "objects", name)
    _require_size(width, height, model_format, name)
    counts: Counter[str] = Counter()
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        text = completion_text(completion)
        counts["empty"] += not text.strip()
        truths = _truth_boxes(_at(objects, i))
        try:
            found = read_mentions(text, _at(width, i), _at(height, i), model_format) if truths else None
        except (ValueError, TypeError):  # the record's size does not fit the model's frame
            found = None
        if truths is None or found is None:
            counts["bad_record"] += 1
            rewards.append(None)
            continue
        counts["unparsable_box"] += found.unparsable > 0
        rewards.append(score(found, truths))
    _report(name, counts, len(rewards), log_metric)
    return rewards


def bbox_reward(
    completions: Sequence[Completion],
    *,
    objects: Sequence[Any] | None = None,
    width: Sequence[Any] | None = None,
    height: Sequence[Any] | None = None,
    model_format: ModelFormat | None = None,
    log_metric: LogMetric | None = None,
    **_: Any,
) -> list[float | None]:
    """Optimal-assignment IoU over max(#predicted, #truth): the right box three times for one object earns 1/3.

    >>> truth = [[{"ref": "cat", "box": [0, 0, 500, 500]}]] * 3
    >>> rewards = bbox_reward(["<box>[0, 0, 500, 500]</box>", "<box>[0, 0, 500, 500]</box>" * 2, "none"], objects=truth)
    >>> [round(r, 6) for r in rewards]
    [1.0, 0.5, 0.0]
    """
    columns = (objects, width, height, model_format, log_metric)
    return _box_rewards("bbox_reward", assignment_score, completions, *columns)


def dual_iou_reward(
    completions: Sequence[Completion],
    *,
    objects: Sequence[Any] | None = None,
    width: Sequence[Any] | None = None,
    height: Sequence[Any] | None = None,
    model_format: ModelFormat | None = None,
    log_metric: LogMetric | None = None,
    **_: Any,
) -> list[float | None]:
    """TreeVGR's recall + precision IoU: repeating the right box does not lower it, a wrong extra box does.

    >>> truth = [[{"ref": "cat", "box": [0, 0, 500, 500]}]] * 2
    >>> right, wrong = "<box>[0, 0, 500, 500]</box>", "<box>[600, 600, 900, 900]</box>"
    >>> [round(r, 6) for r in dual_iou_reward([right * 2, right + wrong], objects=truth)]
    [1.0, 0.75]
    """
    columns = (objects, width, height, model_format, log_metric)
    return _box_rewards("dual_iou_reward", dual_iou_score, completions, *columns)


REWARDS: dict[str, RewardFunc] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "bbox": bbox_reward,
    "dual_iou": dual_iou_reward,
}
"""The rewards a recipe's ``reward_weights`` can name."""

DEFAULT_WEIGHTS: dict[str, float] = {"format": 0.5, "accuracy": 1.0, "bbox": 1.0, "dual_iou": 0.0}
"""Answer and boxes count fully; the format (soon learned, then constant within a group) half; dual IoU is
computed and logged for comparison only."""


def guarded(reward: RewardFunc, *, model_format: ModelFormat | None = None) -> RewardFunc:
    """``reward`` bound to ``model_format``, with NaN/inf values turned into ``None`` and counted
    (``problems/<reward>/not_finite``); keeps the name TRL logs it under."""

    @functools.wraps(reward)
    def wrapper(completions: Sequence[Completion], **columns: Any) -> list[float | None]:
        values = reward(completions, model_format=model_format, **columns)
        clean = [None if v is None or not math.isfinite(v) else float(v) for v in values]
        log_metric = columns.get("log_metric")
        if log_metric is not None and clean:
            bad = sum(v is not None and c is None for v, c in zip(values, clean, strict=True))
            log_metric(f"problems/{reward.__name__}/not_finite", bad / len(clean))
        return clean

    return wrapper


def reward_setup(weights: Mapping[str, float], *, model_format: ModelFormat | None = None) -> tuple[list[RewardFunc], list[float]]:
    """TRL's ``reward_funcs`` and ``GRPOConfig.reward_weights`` from a recipe's ``reward_weights``.

    A weight of 0 still computes and logs that reward (a cheap view of, say, dual IoU) without optimizing it.

    >>> funcs, weights = reward_setup({"format": 0.5, "bbox": 1.0})
    >>> [f.__name__ for f in funcs], weights
    (['format_reward', 'bbox_reward'], [0.5, 1.0])
    """
    check_weights(weights)
    names = list(weights)
    return [guarded(REWARDS[n], model_format=model_format) for n in names], [float(weights[n]) for n in names]


def check_weights(weights: Mapping[str, Any]) -> None:
    """Refuse unknown reward names, non-numbers, negative weights and a set of weights that optimizes nothing.

    A negative weight would train the policy *away* from what the reward measures (worse boxes, wrong answers): no
    use of it is meant here, so it is refused rather than given a meaning. 0 logs a reward without optimizing it.
    """
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise ConfigError(f"unknown rewards {unknown} in reward_weights: use {', '.join(REWARDS)}")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"reward_weights {name}={weight!r} must be a finite number")
        if weight < 0:
            raise ConfigError(
                f"reward_weights {name}={weight!r} is negative, which would train against that reward: use a weight "
                ">= 0 (0 computes and logs the reward without optimizing it)"
            )
    if not any(weights.values()):
        raise ConfigError("reward_weights must give at least one reward a non-zero weight")
