"""An lmms-eval model plugin: any lmms-eval task on a vcot adapter, with vcot's prompt and box read-back.

    pip install -e '.[lmms]'    # from the repository root (make install puts lmms-eval in without its dependencies)
    lmms-eval --model vcot --model_args pretrained=BASE,adapter=ADAPTER --tasks TASK

lmms-eval finds the plugin through the ``lmms_eval.models`` entry point (``pyproject.toml``). The model and its
format are loaded as ``vcot-evaluate`` loads them (:func:`vcot.evaluate.stage.load_generator`: the adapter's
``vcot-model.json`` settles the frame, ``coords=`` is required without one); each question is prompted as
``vcot.grounding.prompts`` prompts a record (the task's text is the question, the first image its image) and generated
with the same batched greedy decoding. What goes back to the task (``output=``):

- ``answer`` (default): the final answer (``vcot.grounding.answers.extract_answer``), what VQA-style tasks score;
- ``response``: the whole response with every valid box read back through ``ModelFormat.read`` and written
  as a house box (``<ref>..</ref><box>[x1, y1, x2, y2]</box>``, 0-1000 of the task's image), for grounding tasks;
- ``response_norm1``: the same with the boxes as fractions of the image (``[0.100, 0.250, 0.500, 0.750]``), the
  frame lmms-eval's RefCOCO grounding tasks (``refcoco_bbox_rec_*``) read the first box in.

Other model args: ``prompt_style`` (cot or direct), ``box_format``, ``max_new_tokens`` (512; a task's own budget
replaces it for direct answers, and for a chain of thought only when larger: :func:`token_budget`),
``batch_size``, ``repetition_penalty`` (1.2), ``box_aware_penalty`` (true: coordinates inside a box are spared). The class is built on first use, so this module imports without
lmms-eval installed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vcot.errors import ConfigError
from vcot.grounding.answers import extract_answer
from vcot.grounding.boxes import BOX_TAGS, render_grounded
from vcot.grounding.model_format import ModelFormat
from vcot.grounding.prompts import PROMPT_STYLES
from vcot.log import get_logger

log = get_logger(__name__)

MODEL_ID = "vcot"
CLASS_PATH = "vcot.evaluate.lmms.VcotLMM"
OUTPUTS = ("answer", "response", "response_norm1")


def manifest() -> Any:
    """The entry point's payload: lmms-eval's registry entry for ``--model vcot``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


def read_back(text: str, fmt: ModelFormat, width: int, height: int, output: str = "answer") -> str:
    """What the plugin returns for one response: its final answer, or the response with house boxes.

    >>> from vcot.grounding.model_format import ModelFormat
    >>> fmt = ModelFormat.for_family(coords="qwen2.5-absolute", box_syntax="qwen",
    ...                              min_pixels=56 * 56, max_pixels=112 * 112)
    >>> text = "See <|object_ref_start|>cup<|object_ref_end|><|box_start|>(0,0),(70,28)<|box_end|>. Answer: a cup"
    >>> read_back(text, fmt, 200, 100, "response"), read_back(text, fmt, 200, 100)
    ('See <ref>cup</ref><box>[0, 0, 500, 500]</box>. Answer: a cup', 'a cup')
    >>> read_back(text, fmt, 200, 100, "response_norm1")
    'See <ref>cup</ref><box>[0.000, 0.000, 0.500, 0.500]</box>. Answer: a cup'
    """
    if output == "answer":
        return extract_answer(text)
    parsed = fmt.read(text, width, height)
    parts, cursor = [], 0
    for found in parsed.boxes:
        start, end = found.span
        if output == "response_norm1":  # the house tags around fractions instead of 0-1000 integers
            tags = BOX_TAGS["house"]
            fractions = "[" + ", ".join(f"{value / 1000:.3f}" for value in found.box) + "]"
            named = f"{tags.ref_open}{found.ref}{tags.ref_close}" if found.ref else ""
            mention = f"{named}{tags.box_open}{fractions}{tags.box_close}"
        else:
            mention = render_grounded(found.ref, found.box)
        parts += [text[cursor:start], mention]
        cursor = end
    return "".join(parts) + text[cursor:]


def token_budget(task_tokens: Any, own: int, prompt_style: str) -> int:
    """The most tokens one response may take. A task's ``max_new_tokens`` is sized for a direct answer (16 for GQA,
    MME, ChartQA...): a chain of thought cut there never reaches its ``Answer:`` line, so it keeps the larger budget.

    >>> token_budget(16, 512, "cot"), token_budget(1024, 512, "cot"), token_budget(16, 512, "direct")
    (512, 1024, 16)
    >>> token_budget(None, 512, "direct")
    512
    """
    if not task_tokens:
        return own
    return int(task_tokens) if prompt_style == "direct" else max(int(task_tokens), own)


def _cut(text: str, until: Any) -> str:
    """The text before the first of the task's stop strings."""
    for stop in [until] if isinstance(until, str) else list(until or []):
        if stop:
            text = text.split(stop, 1)[0]
    return text


def generate_by_mode(model: Any, processor: Any, records: list[dict[str, Any]], settings: Any) -> list[Any]:
    """Greedy responses to ``records`` (``generate_batch``'s, in order), those without an image in text mode: an
    lmms-eval batch may mix both (ScienceQA), and one mode for all would drop the others' images."""
    from vcot.models.generation import generate_batch

    responses: list[Any] = [None] * len(records)
    for with_image in (True, False):
        positions = [i for i, record in enumerate(records) if (record["image"] is not None) == with_image]
        if not positions:
            continue
        text = dataclasses.replace(settings.fmt, mode="text")
        mode = settings if with_image else dataclasses.replace(settings, fmt=text)
        answered = generate_batch(model, processor, [records[i] for i in positions], mode)
        for position, response in zip(positions, answered):
            responses[position] = response
    return responses


def _build_class() -> type:
    # Not split: its length is the class body (short methods), built here so the module imports without lmms-eval.
    from lmms_eval.api.model import lmms

    from vcot.evaluate.stage import load_generator
    from vcot.models.generation import GenerationSettings, Skipped
    from vcot.models.penalty import BOX_AWARE, REPETITION_PENALTY

    class VcotLMM(lmms):  # type: ignore[misc, valid-type]
        """``--model vcot``: a base model and a vcot adapter, prompted and read back as vcot-evaluate does."""

        is_simple = True

        def __init__(
            self,
            pretrained: str,
            adapter: str | None = None,
            coords: str | None = None,
            box_format: str | None = None,
            prompt_style: str = "cot",
            output: str = "answer",
            max_new_tokens: int = 512,
            batch_size: int | str = 1,
            repetition_penalty: float = REPETITION_PENALTY,
            box_aware_penalty: bool | str = BOX_AWARE,
            **_: Any,  # lmms-eval's device, max_batch_size...
        ) -> None:
            super().__init__()
            if output not in OUTPUTS or prompt_style not in PROMPT_STYLES:
                raise ConfigError(f"--model_args: output={output}, prompt_style={prompt_style}: set output to one "
                                  f"of {', '.join(OUTPUTS)} and prompt_style to one of {', '.join(PROMPT_STYLES)}")
            overrides = {k: v for k, v in {"coords": coords, "box_syntax": box_format}.items() if v}
            adapter = str(adapter) if adapter else None
            self.model, self.processor, fmt = load_generator(str(pretrained), adapter, overrides)
            self.settings = GenerationSettings(
                fmt=fmt,
                max_new_tokens=int(max_new_tokens),
                batch_size=max(1, int(batch_size or 1)),
                repetition_penalty=float(repetition_penalty),
                box_aware_penalty=str(box_aware_penalty).lower() in ("1", "true", "yes", "on"),
                prompt_style=prompt_style,  # type: ignore[arg-type]
            )
            self.output = output

        def _record(self, request: Any) -> dict[str, Any]:
            context, _, doc_to_visual, doc_id, task, split = request.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
            image = (visuals if isinstance(visuals, list) else [visuals])[0] if visuals else None
            width, height = image.size if image is not None else (1, 1)
            return {"id": f"{task}/{split}/{doc_id}", "image": image, "width": width, "height": height,
                    "question": context}

        def generate_until(self, requests: list[Any]) -> list[str]:
            answers: list[str] = []
            size = self.settings.batch_size
            for start in range(0, len(requests), size):
                batch = requests[start : start + size]
                records = [self._record(request) for request in batch]
                task_tokens = (batch[0].args[1] or {}).get("max_new_tokens")
                budget = token_budget(task_tokens, self.settings.max_new_tokens, self.settings.prompt_style)
                settings = dataclasses.replace(self.settings, max_new_tokens=budget)
                texts = generate_by_mode(self.model, self.processor, records, settings)
                for request, record, text in zip(batch, records, texts):
                    if isinstance(text, Skipped):
                        log.warning("lmms_sample_skipped", id=record["id"], reason=text.reason)
                        answers.append("")
                        continue
                    text = _cut(text, (request.args[1] or {}).get("until"))
                    answers.append(read_back(text, settings.fmt, record["width"], record["height"], self.output))
            return answers

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            raise NotImplementedError("vcot generates answers: choose a generate_until task")

        def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
            raise NotImplementedError("vcot answers in one round: choose a single-round generate_until task")

    return VcotLMM


def __getattr__(name: str) -> Any:
    """``VcotLMM`` is built on first access (it subclasses lmms-eval's model class)."""
    if name == "VcotLMM":
        cls = _build_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
