"""BiN (``--bin N``): LaCoT's Bayesian inference over N sampled rationales, with a best-of-N baseline.

Per record: the policy (the adapter on) samples N responses at temperature 0.7; each is cut at its last
``Answer:`` into a rationale Z_i; the SFT model (:func:`load_sft_adapter`: the adapter an RGFN adapter continued, an
SFT adapter itself, else the adapter disabled) continues ``Z_i Answer:`` greedily into
an answer Y_i. The scorer then reads every answer after every rationale, S[j, i] = log p(Z_i, Answer: Y_j, end |
X) / tokens, and BiN returns the answer with the highest row mean (:func:`vcot.scoring.gfn.bin_select`): the answer
the rationales agree explain best, not the one a single lucky rationale favours. It shows that answer with the
rationale whose boxes the other samples agree with most (:func:`vcot.scoring.gfn.bin_rationale`: of the rationales
the SFT model answered so; ties to the highest S[j, i]), whose boxes the report scores.
Best-of-N returns the response whose answer tokens have the highest mean log-probability after their own
rationale (the diagonal), so the report can compare the two with greedy decoding.

For a ``rationale_turn`` model (LaCoT's layout) Z is the sampled ``Analyzer`` turn and the SFT model answers in
the assistant turn after it; S scores Z, the turn boundary and the answer turn the same way.

The scorer is the SFT model (the paper's); ``--bin-scorer policy`` scores with the adapter on (the released
code's). Without an adapter the policy and the SFT model are the same network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from vcot.errors import ConfigError, VcotError
from vcot.grounding.answers import ANSWER_MARKER as ANSWER_START
from vcot.grounding.boxes import IntBox
from vcot.grounding.prompts import answer_cue, build_messages
from vcot.io import manifest, storage
from vcot.io.images import load_rgb_or_error
from vcot.log import get_logger
from vcot.models.adapters import active, load_named_adapter
from vcot.models.generation import GenerationSettings, Skipped, grid_mismatch, prompt_text, sampled, two_phase
from vcot.models.loading import stop_token_ids, vision_token_ids
from vcot.progress import track
from vcot.scoring import gfn
from vcot.scoring.response import read_boxes

log = get_logger(__name__)

ANSWER_MARKER = "Answer:"
ANSWER_TOKENS = 32  # answers are a word or a short phrase
Scorer = Literal["sft", "policy"]
SftModel = Literal["continued", "policy", "base"]
"""Where BiN's SFT model is: the adapter the evaluated one continued (loaded beside it as :data:`SFT_ADAPTER`), the
evaluated model itself, or the base with every adapter switched off."""


@dataclass(frozen=True)
class BinSettings:
    """How BiN samples and scores: the same for every record of a run."""

    samples: int = 5
    temperature: float = 0.7
    top_p: float = 1.0
    scorer: Scorer = "sft"
    seed: int = 0
    sft_model: SftModel = "base"


@dataclass(frozen=True)
class BinChoice:
    """One record's outcome: the BiN response, the best-of-N response, and the score matrix behind them."""

    bin_response: str
    best_response: str
    scores: list[list[float]]


def rationale_of(response: str, *, own_turn: bool = False) -> str:
    """The rationale Z of a sampled response: everything before its last ``Answer:`` (the whole text without one,
    or when the rationale is a turn of its own).

    >>> rationale_of("The <ref>cup</ref> is red. Answer: red"), rationale_of("It is red. answer : red")
    ('The <ref>cup</ref> is red. ', 'It is red. ')
    """
    if own_turn:
        return response
    markers = list(ANSWER_START.finditer(response))  # the marker as evaluate reads the answer after it
    return response[: markers[-1].start()] if markers else response.rstrip() + " "


SFT_ADAPTER = "sft"
"""The name the SFT adapter an RGFN adapter continued is loaded under (:func:`load_sft_adapter`)."""


def load_sft_adapter(model: Any, adapter_uri: str | None) -> SftModel:
    """Make the SFT model reachable beside the evaluated adapter, as its card says:

    - an SFT adapter (``method: sft``, continued SFT included), or no adapter: the evaluated model itself;
    - an RL adapter that continued another (``continued_from``: RGFN on the SFT adapter): that one, loaded beside it;
    - otherwise (a new RGFN LoRA on an SFT model, or an adapter written before cards said): the adapter switched off.
    """
    from vcot.models.loading import local_model_path, read_model_card

    card = read_model_card(adapter_uri) if adapter_uri else {}
    where: SftModel
    if not adapter_uri or trained_by(adapter_uri, card) == "sft":
        where = "policy"
    elif card.get("continued_from"):
        start = card["continued_from"]
        try:
            found = local_model_path(start)
        except VcotError as exc:
            raise ConfigError(
                f"BiN scores with the SFT adapter {adapter_uri} continued, {start} ('continued_from' in its "
                "vcot-model.json; a relative path is read from where you run), and it is not there: run from the "
                "folder training ran in, or copy that adapter there"
            ) from exc
        load_named_adapter(model, found, SFT_ADAPTER)
        where = "continued"
    else:
        where = "base"
    log.info("bin_sft_model", sft_model=where, adapter=card.get("continued_from"))
    return where


def trained_by(adapter_uri: str, card: dict[str, Any]) -> str | None:
    """The method that trained an adapter: its card's, else its committed run's recipe (cards before they said)."""
    if card.get("method"):
        return str(card["method"])
    run = storage.parent(adapter_uri)
    if not manifest.is_committed(run):
        return None
    return (manifest.read_manifest(run).get("config", {}).get("recipe_values") or {}).get("method")


@contextlib.contextmanager
def sft_model(model: Any, where: SftModel) -> Iterator[None]:
    """The SFT model for the block (:func:`load_sft_adapter` says where it is)."""
    if where == "continued":
        with active(model, SFT_ADAPTER):
            yield
    elif where == "base" and hasattr(model, "disable_adapter"):
        with active(model, None):
            yield
    else:
        yield


def _encode(processor: Any, texts: list[str], image: Any, *, padding_side: str) -> Any:
    processor.tokenizer.padding_side = padding_side
    images = [image] * len(texts) if image is not None else None
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


def _generate(model: Any, processor: Any, texts: list[str], image: Any, **kwargs: Any) -> list[str]:
    """The responses to ``texts``, without a repetition penalty: the base's ``generation_config.json`` may set one
    (Qwen's: 1.05), and BiN reads the policy's and the SFT model's own distributions."""
    inputs = _encode(processor, texts, image, padding_side="left").to(model.device)
    with torch.inference_mode():
        output = model.generate(**inputs, num_beams=1, suppress_tokens=vision_token_ids(processor.tokenizer),
                                repetition_penalty=1.0, **kwargs)
    stops = stop_token_ids(model, processor.tokenizer)
    texts_out = []
    for row in output[:, inputs["input_ids"].shape[1] :].tolist():
        end = next((i for i, token in enumerate(row) if token in stops), len(row))
        texts_out.append(processor.tokenizer.decode(row[:end], skip_special_tokens=False))
    return texts_out


def sequence_scores(
    model: Any, processor: Any, prompt: str, pieces: Sequence[tuple[str, str]], image: Any, joiner: str = ANSWER_MARKER
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each (rationale, answer): the mean log-probability of every token after the prompt (rationale,
    ``joiner``, answer, end of turn) and of the answer's tokens alone."""
    texts = [prompt + z + joiner + y + processor.tokenizer.eos_token for z, y in pieces]
    inputs = _encode(processor, texts, image, padding_side="right").to(model.device)
    prompt_len = len(_encode(processor, [prompt], image, padding_side="right")["input_ids"][0])
    answer_starts = [len(_encode(processor, [prompt + z + joiner], image, padding_side="right")["input_ids"][0])
                     for z, _ in pieces]
    with torch.inference_mode():
        logits = model(**inputs).logits.float()
    ids = inputs["input_ids"]
    token_logp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # token t+1 given <= t
    positions = torch.arange(1, ids.shape[1], device=ids.device).view(1, -1)
    real = inputs["attention_mask"][:, 1:].bool()
    after_prompt = real & (positions >= prompt_len)
    starts = torch.tensor(answer_starts, device=ids.device).view(-1, 1)
    answer = real & (positions >= starts)
    mean = lambda mask: (token_logp * mask).sum(1) / mask.sum(1).clamp(min=1)
    return mean(after_prompt).cpu(), mean(answer).cpu()


def rationale_boxes(rationale: str, record: dict[str, Any], settings: GenerationSettings) -> list[IntBox]:
    """The boxes of a sampled rationale in house coordinates, read as the scorer reads a response
    (:func:`vcot.scoring.response.read_boxes`); none where the record's size cannot map them, so that sample gets no
    box agreement."""
    try:
        return [found.box for found in read_boxes(settings.fmt, rationale, record).boxes]
    except (ValueError, TypeError):
        return []


def bin_record(
    model: Any, processor: Any, record: dict[str, Any], settings: GenerationSettings, bin_settings: BinSettings
) -> BinChoice | Skipped:
    """BiN and best-of-N for one record (see the module docstring)."""
    image, error = load_rgb_or_error(record["image"]) if settings.fmt.mode == "multimodal" else (None, None)
    if error is not None:  # a bad image skips its record, counted by the caller
        log.warning("image_unreadable", id=record.get("id"), image=record.get("image"), error=str(error))
        return Skipped("image_unreadable")
    fmt = settings.fmt
    absolute = image is not None and fmt.coords == "qwen2.5-absolute"
    if absolute and grid_mismatch(record, fmt.vision.grid(*image.size), fmt):  # as the greedy answers skip it
        return Skipped("grid_mismatch")
    prompt = prompt_text(processor, record, settings)
    n = bin_settings.samples
    responses = _generate(model, processor, [prompt] * n, image, max_new_tokens=settings.max_new_tokens,
                          **sampled(bin_settings.temperature, bin_settings.top_p))
    own_turn = two_phase(settings)  # rationale_turn: Z is the Analyzer turn, the answer turn follows its end
    joiner = answer_cue(processor, build_messages(record, settings.fmt, with_answer=False)) if own_turn else ANSWER_MARKER
    rationales = [rationale_of(text, own_turn=own_turn) for text in responses]
    with sft_model(model, bin_settings.sft_model):
        answers = _generate(model, processor, [prompt + z + joiner for z in rationales], image,
                            do_sample=False, max_new_tokens=ANSWER_TOKENS)
    pairs = [(rationales[i], answers[j]) for j in range(n) for i in range(n)]  # row j: answer j after each Z_i
    scoring = sft_model(model, bin_settings.sft_model) if bin_settings.scorer == "sft" else contextlib.nullcontext()
    with scoring:
        joint, answer_only = sequence_scores(model, processor, prompt, pairs, image, joiner)
    scores = joint.view(n, n)
    chosen = gfn.bin_select(scores)
    shown = gfn.bin_rationale(scores, answers, chosen, [rationale_boxes(z, record, settings) for z in rationales])
    best = gfn.best_of_n(answer_only.view(n, n).diagonal())

    def respond(z: int, y: int) -> str:  # rationale z with answer y
        if own_turn:
            return f"{rationales[z].strip()} {answers[y].strip()}"
        return rationales[z] + ANSWER_MARKER + answers[y]

    return BinChoice(respond(shown, chosen), respond(best, best), scores.tolist())


def bin_responses(
    model: Any, processor: Any, records: Sequence[dict[str, Any]], settings: GenerationSettings,
    bin_settings: BinSettings,
) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:
    """BiN's and best-of-N's response per record id, and what to record in the details."""
    torch.manual_seed(bin_settings.seed)
    by_bin: dict[str, str] = {}
    by_best: dict[str, str] = {}
    skipped: dict[str, int] = {}
    for record in track(records, "bin_progress", unit="record", samples=bin_settings.samples):
        choice = bin_record(model, processor, record, settings, bin_settings)
        if isinstance(choice, Skipped):
            skipped[choice.reason] = skipped.get(choice.reason, 0) + 1
            continue
        by_bin[str(record["id"])] = choice.bin_response
        by_best[str(record["id"])] = choice.best_response
    details = {"samples": bin_settings.samples, "temperature": bin_settings.temperature, "top_p": bin_settings.top_p,
               "scorer": bin_settings.scorer, "sft_model": bin_settings.sft_model, "seed": bin_settings.seed,
               "skipped_samples": skipped}
    log.info("bin_done", records=len(records), **{k: v for k, v in details.items() if k != "skipped_samples"})
    return by_bin, by_best, details


def comparison_lines(metrics: dict[str, Any]) -> list[str]:
    """Greedy vs BiN vs best-of-N answer accuracy, overall and per subset, from an evaluate ``metrics.json``; with
``--prompt-style direct`` or ``both`` the greedy answers to the direct prompt too (BiN always samples rationales).

    >>> rows = [{"subset": "overall", "samples": {"cot": 4}, "answer_accuracy": {"cot": 0.25, "bin": 0.5, "best_of_n": 0.25}}]
    >>> print("\\n".join(comparison_lines({"prompt_styles": {"styles": ["cot", "bin", "best_of_n"], "rows": rows}})))
    answer accuracy   samples   greedy      BiN best-of-N
    overall                 4    0.250    0.500    0.250
    """
    table = metrics.get("prompt_styles") or {}
    styles = [s for s in ("cot", "direct", "bin", "best_of_n") if s in table.get("styles", [])]
    if "bin" not in styles:
        return ["no BiN here: evaluate with --bin N"]
    names = {"cot": "greedy", "direct": "direct", "bin": "BiN", "best_of_n": "best-of-N"}
    lines = [f"{'answer accuracy':<15} {'samples':>9}" + "".join(f" {names[s]:>8}" for s in styles)]
    for row in table["rows"]:
        accuracy = row.get("answer_accuracy", {})
        cells = "".join(f" {accuracy.get(s, float('nan')):>8.3f}" for s in styles)
        lines.append(f"{row['subset']:<15} {row['samples'][styles[0]]:>9}{cells}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m vcot.evaluate.bin --metrics URI``: print the comparison (what ``make local-rgfn`` shows)."""
    import argparse

    from vcot.io import storage
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--metrics", required=True, help="an evaluate output's metrics.json (file or s3:// URI)")
    args = parser.parse_args(argv)
    print("\n".join(comparison_lines(storage.read_json(args.metrics))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
