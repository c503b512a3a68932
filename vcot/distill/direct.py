"""Seed 000: one grounded answer per record, validated, with one corrective retry when it is invalid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vcot.distill import prompts
from vcot.distill.validate import Verdict, check_answer
from vcot.llm.chat import CachedChat


@dataclass
class Outcome:
    """What a strategy produced for one record: the last answer, its verdict, and counters for the report."""

    text: str
    verdict: Verdict
    corrected: bool = False
    stats: dict[str, int] = field(default_factory=dict)


async def ask_valid(
    teacher: CachedChat, messages: list[dict[str, Any]], record: dict[str, Any], *, purpose: str
) -> Outcome:
    """Ask, validate, and if invalid ask once more with a message naming the problem."""
    record_id = str(record.get("id", ""))
    answer = await teacher.ask(messages, record_id=record_id, purpose=purpose)
    verdict = check_answer(answer.text, record)
    if verdict.problem is None:
        return Outcome(answer.text, verdict)
    retry = prompts.corrective_messages(messages, answer.text, verdict.problem)
    second = await teacher.ask(retry, record_id=record_id, purpose=f"{purpose}-correction")
    return Outcome(second.text, check_answer(second.text, record), corrected=True)


async def direct_rationale(
    teacher: CachedChat, record: dict[str, Any], image_url: str, *, hint_answer: bool
) -> Outcome:
    messages = prompts.direct_messages(record, image_url, hint_answer=hint_answer)
    return await ask_valid(teacher, messages, record, purpose="answer")
