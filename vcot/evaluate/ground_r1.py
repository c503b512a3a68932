"""Ground-R1's answer rules for VisCoT's benchmark (``--benchmark ground-r1``), as its scoring script applies them.

Ground-R1 (``eval/eval_scripts/calculation_baseline.py`` of its repository) scores each subset of its 150-per-subset
VisCoT file (``vcot-convert --source ground-r1``) by its own rule, on the model's final answer (theirs inside
``<answer>`` tags, ours after ``Answer:``; the whole response when there is none):

- Visual7W, GQA, Open Images: the option's letter, read as their script reads it: the first character of the answer
  when it is a letter A-D (so ``Door`` reads as ``D``), else an ``X.`` anywhere in the response, else the answer equal
  to the right one, ignoring case (Visual7W's questions are open: this is exact match). One deviation, because vcot
  shows options as ``(A) text`` and its models answer with the option: an answer that names an option (by letter,
  ``(A)``, or its text: :func:`vcot.grounding.answers.choice_index`) scores 1 when it is the right one, else 0;
  their reading applies to answers that name none;
- DocVQA, InfographicsVQA, TextCaps, TextVQA, DUDE, SROIE: 1 - word error rate, the smaller of the two directions,
  in [0, 1], on lower-cased words;
- Flickr30k: the mean F-measure of ROUGE-1, ROUGE-2 and ROUGE-L with Porter stemming (Google's ``rouge-score``, the
  package their script calls: the ``benchmarks`` extra, ``make install`` or ``pip install -e '.[benchmarks]'``);
- VSR, CUB: 1 for the right answer (ignoring case), 0.6 when the answer contains it, else 0;
- EMOTIC: not scored (their script gives it 0 and their table leaves it out).

The per-subset means and their average over the 12 subsets of Ground-R1's table are ``vcot.evaluate.benchmark``'s.
"""

from __future__ import annotations

import importlib.util
import re
import string
from collections.abc import Sequence
from functools import cache
from typing import Any

from vcot.errors import ConfigError
from vcot.grounding.answers import choice_index, final_answer

LETTER_SUBSETS = frozenset({"v7w", "gqa", "openimages"})
WER_SUBSETS = frozenset({"docvqa", "infographicsvqa", "textcap", "textvqa", "dude", "sroie"})
ROUGE_SUBSETS = frozenset({"flickr30k"})
CONTAINMENT_SUBSETS = frozenset({"vsr", "cub"})
CONTAINED_SCORE = 0.6
_FIRST_LETTER = re.compile(r"\s*([A-Da-d])")
_DOTTED_LETTER = re.compile(r"\b([A-D])\.")


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance over the reference's word count (at least 1).

    >>> word_error_rate("the red car", "the blue car"), word_error_rate("", "extra words")
    (0.3333333333333333, 2.0)
    """
    ref, hyp = reference.split(), hypothesis.split()
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, 1):
        current = [i]
        for j, hyp_word in enumerate(hyp, 1):
            substituted = previous[j - 1] + (ref_word != hyp_word)
            current.append(min(substituted, previous[j] + 1, current[j - 1] + 1))
        previous = current
    return previous[-1] / max(1, len(ref))


def wer_score(truth: str, answer: str) -> float:
    """1 - the smaller word error rate of the two directions, in [0, 1], lower-cased.

    >>> wer_score("Evelyn Beatrice Hall", "evelyn hall"), wer_score("2581", "The number is 2581")
    (0.6666666666666667, 0.25)
    """
    truth, answer = truth.lower(), answer.lower()
    return max(0.0, min(1.0, 1 - min(word_error_rate(truth, answer), word_error_rate(answer, truth))))


def require_rouge() -> None:
    """Refuse ``--benchmark ground-r1`` before anything runs when the ROUGE package is missing."""
    if importlib.util.find_spec("rouge_score") is None:
        raise ConfigError(
            "--benchmark ground-r1 scores Flickr30k with ROUGE (Google's rouge-score, as Ground-R1 does): "
            "make install, or pip install -e '.[benchmarks]' in the clone"
        )


@cache
def _rouge() -> Any:
    require_rouge()
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge_score(truth: str, answer: str) -> float:
    """The mean F-measure of ROUGE-1, -2 and -L (Porter-stemmed), lower-cased, in [0, 1].

    >>> round(rouge_score("The boy is wearing blue.", "the boy wears blue"), 4)
    0.7831
    """
    scores = _rouge().score(truth.lower(), answer.lower())
    mean = (scores["rouge1"].fmeasure + scores["rouge2"].fmeasure + scores["rougeL"].fmeasure) / 3
    return max(0.0, min(1.0, mean))


def letter_score(response: str, answer: str, truth: str) -> float:
    """1 when the response's option letter (or its answer, for an open question) is the truth, by Ground-R1's reading.

    >>> letter_score("It holds tea. Answer: A. Coffee cup", "A. Coffee cup", "A")
    1.0
    >>> letter_score("Answer: Door", "Door", "D"), letter_score("See B. the wall", "the wall", "B")
    (1.0, 1.0)
    >>> letter_score("Answer: foliage.", "foliage.", "Foliage."), letter_score("Answer: leaves", "leaves", "Foliage.")
    (1.0, 0.0)
    """
    marked = final_answer(response) is not None
    first = _FIRST_LETTER.match(answer) if marked else None
    if (first.group(1) if first else response.strip()).lower() == truth.lower():
        return 1.0
    dotted = _DOTTED_LETTER.search(response)
    if (dotted.group(1) if dotted else response.strip()).lower() == truth.lower():
        return 1.0
    return 1.0 if answer.lower() == truth.lower() else 0.0


def containment_score(answer: str, truth: str) -> float:
    """1 for the right answer, 0.6 when the answer contains it, else 0 (ignoring case).

    >>> containment_score("Yes", "yes"), containment_score("Yes, it does.", "yes"), containment_score("No", "yes")
    (1.0, 0.6, 0.0)
    """
    if answer.lower() == truth.lower():
        return 1.0
    return CONTAINED_SCORE if truth.lower() in answer.lower() else 0.0


def truth_of(record: dict[str, Any]) -> str:
    """The answer as Ground-R1's file gives it: the right option's letter (as the options were shown), else the
    answer's text.

    >>> truth_of({"answer": "bowl", "choices": ["cup", "bowl"], "answer_index": 1}), truth_of({"answer": "7"})
    ('B', '7')
    """
    index = record.get("answer_index")
    if record.get("choices") and isinstance(index, int):
        return string.ascii_uppercase[index]
    return str(record.get("answer") or "")


def rule_score(record: dict[str, Any], response: str) -> float | None:
    """One answer's score by its subset's rule; ``None`` for a subset the rules do not score (EMOTIC)."""
    subset = str(record.get("subset", "")).lower()
    truth = truth_of(record)
    marked = final_answer(response)
    answer = marked if marked is not None else response.strip()
    if subset in LETTER_SUBSETS:
        named = choice_index(answer, record["choices"]) if record.get("choices") else None
        if named is not None:  # vcot's options are "(A) text": the option the answer names decides
            return 1.0 if named == record.get("answer_index") else 0.0
        return letter_score(response, answer, truth)
    if subset in WER_SUBSETS:
        return wer_score(truth, answer)
    if subset in ROUGE_SUBSETS:
        return rouge_score(truth, answer)
    if subset in CONTAINMENT_SUBSETS:
        return containment_score(answer, truth)
    return None


def add_rule_scores(rows: Sequence[dict[str, Any]], records_by_id: dict[str, dict[str, Any]]) -> None:
    """Set each prediction row's ``rule_score`` from its record (the one asked, options in the order shown)."""
    for row in rows:
        row["rule_score"] = rule_score(records_by_id[str(row["id"])], row["prediction"])


def add_rule_metrics(metrics: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    """``rule_score`` (the mean over the scored rows) overall and per subset, where rows carry one."""
    per_subset = [(values, [r for r in rows if r["subset"] == name]) for name, values in metrics["subsets"].items()]
    for values, selected in [(metrics["overall"], rows), *per_subset]:
        scores = [row["rule_score"] for row in selected if row.get("rule_score") is not None]
        values["rule_score"] = sum(scores) / len(scores) if scores else None
