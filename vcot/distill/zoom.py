"""Seed 003: zoom in, then verify.

1. a grounded caption of the whole image;
2. a caption of each known object's crop (the record's ground-truth boxes, or else the boxes the caption
   named), upscaled so small things become visible;
3. one grounded rationale merged from the image, the question and those captions (validated, with one
   corrective retry);
4. a text-only verification pass that checks every claimed object against the captions and drops or
   renames the unsupported ones (validated again by the stage, with one corrective retry).

What the verifier changed is counted by comparing the objects of the draft and of the verified rationale.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

from vcot.distill import prompts
from vcot.distill.direct import Outcome, ask_valid
from vcot.grounding.boxes import parse_grounded
from vcot.llm.chat import CachedChat


def zoom_regions(record: dict[str, Any], caption: str, limit: int) -> list[tuple[str | None, list[int]]]:
    """Regions to zoom into: the record's objects, else the caption's grounded objects; unique boxes, at most ``limit``.

    >>> zoom_regions({"objects": []}, "a <ref>cat</ref><box>[1, 2, 30, 40]</box>", 4)
    [('cat', [1, 2, 30, 40])]
    """
    known = [(obj.get("ref") or None, list(obj["box"])) for obj in record.get("objects") or []]
    found = known or [(b.ref, list(b.box)) for b in parse_grounded(caption).boxes]
    regions: list[tuple[str | None, list[int]]] = []
    for ref, box in found:
        if all(box != seen for _, seen in regions):
            regions.append((ref, box))
    return regions[:limit]


def object_changes(draft: str, final: str) -> dict[str, int]:
    """Compare grounded objects before and after verification: kept, rewritten (same box, new name), dropped, added.

    >>> draft = "<ref>a</ref><box>[1,1,9,9]</box> <ref>b</ref><box>[2,2,8,8]</box>"
    >>> object_changes(draft, "<ref>c</ref><box>[1,1,9,9]</box>")
    {'claimed': 2, 'kept': 0, 'rewritten': 1, 'dropped': 1, 'added': 0}
    """
    before = [(b.ref, b.box) for b in parse_grounded(draft).boxes]
    after = [(b.ref, b.box) for b in parse_grounded(final).boxes]
    unmatched_after = Counter(after)
    kept, changed = 0, []
    for item in before:
        if unmatched_after[item] > 0:
            unmatched_after[item] -= 1
            kept += 1
        else:
            changed.append(item)
    free_boxes = Counter(box for (_, box), count in unmatched_after.items() for _ in range(count))
    rewritten = dropped = 0
    for _, box in changed:
        if free_boxes[box] > 0:
            free_boxes[box] -= 1
            rewritten += 1
        else:
            dropped += 1
    added = sum(free_boxes.values())
    return {"claimed": len(before), "kept": kept, "rewritten": rewritten, "dropped": dropped, "added": added}


async def _gather_all(tasks: Sequence[Any]) -> list[Any]:
    """Like ``gather`` but lets every task finish (batch mode collects all requests) before raising the first error."""
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def zoom_rationale(
    teacher: CachedChat,
    record: dict[str, Any],
    image: bytes,
    image_url: str,
    *,
    hint_answer: bool,
    max_branches: int,
    zoom_size: int,
) -> tuple[Outcome, list[dict[str, Any]], str]:
    """The draft outcome (validated), plus the verification conversation and the draft text for the stage."""
    record_id = str(record.get("id", ""))
    caption = await teacher.ask(prompts.caption_messages(image_url), record_id=record_id, purpose="caption")
    regions = zoom_regions(record, caption.text, max_branches)
    crops = await asyncio.gather(
        *(asyncio.to_thread(prompts.crop_zoom, image, box, size=zoom_size) for _, box in regions)
    )
    branch_answers = await _gather_all(
        [
            teacher.ask(
                prompts.branch_messages(prompts.image_data_url(crop), ref, box), record_id=record_id, purpose="branch"
            )
            for (ref, box), crop in zip(regions, crops)
        ]
    )
    evidence = prompts.evidence_text(
        caption.text, [(ref, box, answer.text) for (ref, box), answer in zip(regions, branch_answers)]
    )
    merge = prompts.merge_messages(record, image_url, evidence, hint_answer=hint_answer)
    draft = await ask_valid(teacher, merge, record, purpose="merge")
    draft.stats["branches"] = len(regions)
    return draft, prompts.verify_messages(draft.text, evidence), draft.text


async def zoom_and_verify(
    teacher: CachedChat,
    record: dict[str, Any],
    image: bytes,
    image_url: str,
    *,
    hint_answer: bool,
    max_branches: int,
    zoom_size: int,
) -> Outcome:
    """The whole seed-003 strategy; ``stats`` counts branches and what the verifier changed."""
    draft, verify, draft_text = await zoom_rationale(
        teacher, record, image, image_url, hint_answer=hint_answer, max_branches=max_branches, zoom_size=zoom_size
    )
    if draft.verdict.problem is not None:
        return draft  # not worth verifying: rejected with the draft's reason
    final = await ask_valid(teacher, verify, record, purpose="verify")
    final.corrected = final.corrected or draft.corrected
    final.stats = {"branches": draft.stats["branches"], "verified": 1}
    if final.verdict.problem is None:
        final.stats.update({f"verifier_{k}": v for k, v in object_changes(draft_text, final.text).items()})
    return final
