"""An LLM judge for free-form answers, as VisCoT's benchmark scores them (and Ground-R1 after it).

VisCoT's protocol (``llava/eval/eval_cot_score.py`` of its repository): a text-only chat with an
OpenAI-compatible model that gets the question, the standard answer and the model's answer, and replies
``score: <score>``, 0 to 1, the closer the meaning the higher. We send the *final answer* of a response
(``vcot.grounding.answers.extract_answer``: what follows ``Answer:``), as VisCoT sends its model's answer turn.

Unlike VisCoT's script, a reply we cannot read is never a 0: it is a per-sample failure, counted by
reason (``malformed_reply``: no single ``score: x`` with x in [0, 1]; ``empty_reply``: no text), and
left out of the judge's mean. Every request goes through ``vcot.llm`` (the teacher's machinery): at most
``--judge-concurrency`` in flight, retries with backoff honouring Retry-After, the answer cache (a rerun
sends no request it has an answer for) and the token/cost ledger. A request that keeps failing, or one
the endpoint refuses (401, 404...), stops the run (exit 1); the answers so far are cached.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from vcot.errors import ConfigError
from vcot.evaluate.config import EvaluateConfig
from vcot.llm.ask import Endpoint, ask_all, default_cache

SYSTEM_PROMPT = (
    "You proofread answers: score the model's answer against the standard answer to the question. "
    "The full score is 1 and the lowest 0; the closer the model's answer is to the standard answer, "
    'the higher the score. Reply in the form "score: <score>".'
)
USER_TEMPLATE = "question: {question}\nstandard answer: {reference}\nmodel's answer: {prediction}\n"
_SCORE = re.compile(r"score\s*[:=]\s*([-+]?(?:\d+\.?\d*|\.\d+))", re.IGNORECASE)


JUDGE_PARAMS = {"temperature": 0.0, "max_tokens": 64}
"""Sent with every judge request (part of the cache key): greedy, a short reply."""


def judge_messages(question: str, reference: str, prediction: str) -> list[dict[str, Any]]:
    """The judge's chat for one answer (text only, as VisCoT's)."""
    text = USER_TEMPLATE.format(question=question.strip(), reference=reference.strip(), prediction=prediction.strip())
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]


def parse_score(reply: str) -> float | None:
    """The score of a judge's reply: one ``score: x`` (repeats of the same x allowed) with x in [0, 1], else ``None``.

    >>> parse_score("score: 0.8"), parse_score("Score: 1"), parse_score("The answer is close.\\nscore: .5")
    (0.8, 1.0, 0.5)
    >>> parse_score("score: 7"), parse_score("score: 0.2 or score: 0.9"), parse_score("good")
    (None, None, None)
    """
    values = {float(value) for value in _SCORE.findall(reply)}
    if len(values) != 1:
        return None
    value = values.pop()
    return value if 0.0 <= value <= 1.0 else None


def verdict(reply: str) -> tuple[float | None, str | None]:
    """``(score, None)`` or ``(None, failure reason)`` for one reply."""
    if not reply.strip():
        return None, "empty_reply"
    score = parse_score(reply)
    return (score, None) if score is not None else (None, "malformed_reply")


def api_key_for(flag: str) -> str:
    """``OPENAI_API_KEY``, which ``flag`` needs (never a flag or a config field: it would land in the manifest)."""
    key = os.environ.get("OPENAI_API_KEY", "")
    if not key:
        raise ConfigError(f"{flag} needs OPENAI_API_KEY: export it (in a cluster, from a Secret); any value for a "
                          "keyless endpoint")  # fmt: skip
    return key


def judge_endpoint(config: EvaluateConfig, output: str) -> tuple[Endpoint, str] | None:
    """The judge and its key when ``--judge-model`` is on (checked before any model loads), else ``None``."""
    if not config.judge_model:
        return None
    endpoint = Endpoint(
        model=config.judge_model,
        cache=(config.judge_cache or default_cache(output, "_judge_cache")).rstrip("/"),
        params=JUDGE_PARAMS,
        base_url=config.judge_base_url,
        concurrency=config.judge_concurrency,
        max_attempts=config.judge_max_attempts,
        timeout=config.judge_timeout,
        backoff_base=config.judge_backoff_base,
        backoff_max=config.judge_backoff_max,
    )
    return endpoint, api_key_for("--judge-model")


def judge_rows(
    rows: Sequence[dict[str, Any]], records: dict[str, dict[str, Any]], endpoint: Endpoint, api_key: str
) -> dict[str, Any]:
    """Ask the judge about every row (``judge_score``, ``judge_failure``, ``judge_reply`` are set on it).

    Returns what the run spent (the ledger) and what the cache held, for ``metrics.json``.
    """
    requests = []
    for row in rows:
        record = records[str(row["id"])]
        question, reference = str(record.get("question", "")), str(record.get("answer", ""))
        messages = judge_messages(question, reference, row["predicted_answer"])
        requests.append((str(row["id"]), lambda messages=messages: messages))
    asked = ask_all(endpoint, api_key, requests, role="judge", flags="--judge-max-attempts / lower --judge-concurrency")
    for row, completion in zip(rows, asked.completions, strict=True):
        assert completion is not None  # every judge request is asked
        row["judge_score"], row["judge_failure"] = verdict(completion.text)
        row["judge_reply"] = completion.text[:200]
    return asked.spent


def summarize_judge(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The judge's mean score over the samples it scored, how many it scored, and its failures by reason.

    >>> summarize_judge([{"judge_score": 1.0}, {"judge_score": 0.5},
    ...                  {"judge_score": None, "judge_failure": "empty_reply"}])
    {'judge_score': 0.75, 'judge_scored': 2, 'judge_failures': {'empty_reply': 1}}
    >>> summarize_judge([{"judge_score": None, "judge_failure": "empty_reply"}])["judge_score"] is None  # not a 0
    True
    """
    rows = list(rows)
    scores = [row["judge_score"] for row in rows if row.get("judge_score") is not None]
    failures = Counter(row["judge_failure"] for row in rows if row.get("judge_failure"))
    return {
        "judge_score": sum(scores) / len(scores) if scores else None,  # nothing judged: no score, not a zero
        "judge_scored": len(scores),
        "judge_failures": dict(sorted(failures.items())),
    }


def add_judge_metrics(metrics: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    """Add the judge's numbers to ``metrics["overall"]`` and to each ``metrics["subsets"][name]``."""
    metrics["overall"].update(summarize_judge(rows))
    for name, values in metrics["subsets"].items():
        values.update(summarize_judge(row for row in rows if row["subset"] == name))
