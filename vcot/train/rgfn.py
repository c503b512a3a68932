"""GFN (RGFN, LaCoT): GFlowNet fine-tuning of the rationale policy q_θ(Z | X) on committed records.

The rationale Z is a turn of its own (the ``rationale_turn`` layout: an ``Analyzer`` turn, then the answer turn),
so ending the rationale is one token, the end of turn. Per prompt X, every step:

1. the reference rationale Z_ref of the record plus ``explore_nums`` rationales sampled from the policy with a KV
   cache, in chunks of ``explore_min_bs`` (temperature 1, or with probability 1/4 uniform in [0.5, 1]; the end of
   turn banned before ``rat_min_len`` tokens; at most ``rat_max_len``);
2. the policy's untempered log-probabilities of each token (PF) and of the end of turn (PT) at every state;
3. the reward, from the same network with a frozen copy of the starting adapter active (the SFT model, no
   gradient; :mod:`vcot.models.adapters`):
   log R(s_k) = log π(z_<k, end of turn, answer turn | X) / T_s, exact every ``reward_every`` tokens and at the
   end, linearly interpolated between (:mod:`vcot.scoring.gfn`);
4. the reference-guided filter (r_j >= δ_s · r_ref, the reference always kept) and the modified sub-trajectory
   balance loss over the kept trajectories.

The objective, the schedules and the filter are pure functions in :mod:`vcot.scoring.gfn` (tested there, including a
convergence test); this module only computes their inputs with the model. Storage, checkpoints, SIGTERM, resume,
the pointer and the manifest are the shared machinery's (:mod:`vcot.train.common`), as for SFT and GRPO.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter, defaultdict
from typing import Any

import torch
from transformers import Trainer

from vcot.errors import ConfigError, VcotError
from vcot.grounding.model_format import RATIONALE_ROLE, ModelFormat
from vcot.grounding.prompts import build_messages, prompt_turns, rationale_turn_problem, turn_prefix
from vcot.log import get_logger
from vcot.models.adapters import REFERENCE, active, reference_adapter
from vcot.models.generation import sampled
from vcot.models.loading import image_token_types, load_processor_for, machine_precision, vision_token_ids
from vcot.scoring import gfn
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
from vcot.train.estimate import announce_cpu_run, rgfn_workload
from vcot.train.generation_eval import held_out, held_out_arguments, watch_held_out
from vcot.train.grpo import checked_image, grpo_format, record_problem, usable_train_records
from vcot.train.options import build_arguments, use_vision_learning_rate
from vcot.train.recipe import Recipe
from vcot.train.sharding import is_sharded, sharded_trainer

log = get_logger(__name__)

CUE = "\u2063vcot-rationale\u2063"


def rgfn_problem(record: dict[str, Any]) -> str | None:
    """GRPO's prompt checks (objects optional) plus RGFN's own need: a reference rationale."""
    return record_problem(record, need_objects=False) or (None if record.get("rationale") else "missing_rationale")


def read_records(data_uri: str) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The train records usable for RGFN (a prompt, an answer and a reference rationale), the rest counted."""
    return usable_train_records(data_uri, rgfn_problem, "RGFN",
                                "records need an image, a question, an answer and a reference rationale")


@dataclasses.dataclass
class Prompt:
    """One record, tokenized for RGFN: X (with its image inputs), the reference Z, the end-of-turn-and-answer tail."""

    inputs: dict[str, torch.Tensor]
    reference: list[int]
    tail: list[int]
    image_problem: str | None = None
    """``unreadable`` or ``size_mismatch`` (another patch grid than the record's size): a gray image stood in."""


class RGFNTrainer(Trainer):
    """A ``Trainer`` whose loss is RGFN's: it samples, scores and balances rationales (see the module docstring)."""

    def __init__(self, *args: Any, recipe: Recipe, fmt: ModelFormat, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recipe, self.fmt = recipe, fmt
        self.end_id = int(self.processing_class.tokenizer.eos_token_id)
        self.logged: dict[str, list[float]] = defaultdict(list)
        self.warned: set[str] = set()  # records whose image problem was logged (once per record and process)

    # -- inputs ------------------------------------------------------------------------------------
    def prompt(self, record: dict[str, Any]) -> Prompt:
        processor = self.processing_class
        messages = build_messages(record, self.fmt)  # (system,) user, Analyzer, assistant: the rationale_turn layout
        prompt = prompt_turns(messages)
        x_text = turn_prefix(processor, prompt, RATIONALE_ROLE)
        image, problem = self.image(record) if self.fmt.mode == "multimodal" else (None, None)
        inputs = processor(text=[x_text], images=[image] if image is not None else None, return_tensors="pt")
        reasoning = messages[len(prompt)]["content"][0]["text"]
        full = processor.apply_chat_template([*prompt, {"role": RATIONALE_ROLE, "content": [
            {"type": "text", "text": CUE}]}, messages[-1]], tokenize=False)
        tokenizer = processor.tokenizer
        reference = tokenizer(reasoning, add_special_tokens=False)["input_ids"][: self.recipe.rat_max_len]
        tail = tokenizer(full.split(CUE, 1)[1].rstrip("\n"), add_special_tokens=False)["input_ids"]
        if not tail or tail[0] != self.end_id:
            raise VcotError("the chat template does not end the rationale turn with the end-of-turn token: RGFN "
                            "needs the family's own chat template (a Qwen2.5-VL or Qwen3-VL processor, as tokenize used)")
        return Prompt({k: v.to(self.args.device) for k, v in inputs.items()}, reference, tail, problem)

    def image(self, record: dict[str, Any]) -> tuple[Any, str | None]:
        """The record's image, else a gray one of the record's size and why (``unreadable``, ``size_mismatch``):
        the record then runs every pass as usual, so every rank runs the same ones, and its loss counts zero.
        Storage that cannot be reached is not a bad image: it stops the run (as SFT's collator does)."""
        from PIL import Image

        size = (int(record["width"]), int(record["height"]))
        image, problem, details = checked_image(record["image"], *size, self.fmt)
        if problem is None:
            return image, None
        if record.get("id") not in self.warned:
            self.warned.add(record.get("id"))
            log.warning(f"image_{problem}", record=record.get("id"), image=record["image"], size=list(size), **details,
                        hint="the record teaches nothing: fix its image or its width/height (convert)")
        return Image.new("RGB", size, "gray"), problem

    def batch_inputs(self, prompt: Prompt, continuations: list[list[int]]) -> dict[str, torch.Tensor]:
        """X followed by each continuation, right padded, with X's image repeated per row."""
        x = prompt.inputs["input_ids"][0].tolist()
        width = max(len(c) for c in continuations) + len(x)
        pad = self.processing_class.tokenizer.pad_token_id
        ids = torch.full((len(continuations), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, continuation in enumerate(continuations):
            ids[row, : len(x) + len(continuation)] = torch.tensor(x + continuation)
            mask[row, : len(x) + len(continuation)] = 1
        batch = {"input_ids": ids.to(self.args.device), "attention_mask": mask.to(self.args.device)}
        if "pixel_values" in prompt.inputs:
            batch["pixel_values"] = prompt.inputs["pixel_values"].repeat(len(continuations), 1)
            batch["image_grid_thw"] = prompt.inputs["image_grid_thw"].repeat(len(continuations), 1)
            batch["mm_token_type_ids"] = image_token_types(batch["input_ids"], self.processing_class.tokenizer)
        return batch

    # -- 1. sampling -------------------------------------------------------------------------------
    def sample(self, model: Any, prompt: Prompt) -> list[list[int]]:
        """``explore_nums`` rationales from the policy (KV cache), cut before their end-of-turn token. The
        temperatures come from the seed and the step (a resumed run draws the same; torch's RNG the trainer restores)."""
        recipe, samples = self.recipe, []
        rng = random.Random(recipe.seed * 1_000_003 + self.state.global_step)
        x_len = prompt.inputs["input_ids"].shape[1]
        while len(samples) < recipe.explore_nums:
            chunk = min(recipe.explore_min_bs, recipe.explore_nums - len(samples))
            batch = self.batch_inputs(prompt, [[]] * chunk)
            was_training = model.training
            model.eval()  # sampling: no dropout, and the KV cache even when training checkpoints activations
            with torch.no_grad():
                out = model.generate(**batch, **sampled(gfn.sampling_temperature(rng), 1.0), repetition_penalty=1.0,
                                     min_new_tokens=recipe.rat_min_len,
                                     max_new_tokens=recipe.rat_max_len, eos_token_id=self.end_id,
                                     pad_token_id=self.processing_class.tokenizer.pad_token_id, use_cache=True,
                                     suppress_tokens=vision_token_ids(self.processing_class.tokenizer))
            model.train(was_training)
            for row in out[:, x_len:].tolist():
                samples.append(row[: row.index(self.end_id)] if self.end_id in row else row)
        return samples

    # -- 2. the policy's PF and PT -----------------------------------------------------------------
    def policy_terms(self, model: Any, prompt: Prompt, rationales: list[list[int]]) -> tuple[torch.Tensor, ...]:
        x_len = prompt.inputs["input_ids"].shape[1]
        longest = max(len(z) for z in rationales)
        batch = self.batch_inputs(prompt, rationales)
        # The last longest + 1 positions are the states s_0 .. s_longest: state t predicts the token after z_<t.
        states = model(**batch, use_cache=False, logits_to_keep=longest + 1).logits.float()
        assert batch["input_ids"].shape[1] == x_len + longest
        log_norm = states.logsumexp(-1)
        log_pt = states[..., self.end_id] - log_norm
        tokens = torch.zeros(len(rationales), longest, dtype=torch.long, device=states.device)
        for row, z in enumerate(rationales):
            tokens[row, : len(z)] = torch.tensor(z)
        log_pf = states[:, :longest].gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - log_norm[:, :longest]
        return log_pf, log_pt

    # -- 3. the rewards ----------------------------------------------------------------------------
    def log_rewards(self, model: Any, prompt: Prompt, rationales: list[list[int]], temperature: float) -> torch.Tensor:
        """log R at every state of every rationale: exact at the anchors, interpolated between (no gradient)."""
        recipe = self.recipe
        anchors = [gfn.reward_anchors(len(z), recipe.reward_every, recipe.rat_min_len) for z in rationales]
        queries = [z[:k] + prompt.tail for z, ks in zip(rationales, anchors, strict=True) for k in ks]
        joint = self.joint_log_probs(model, prompt, queries)
        out = torch.zeros(len(rationales), max(len(z) for z in rationales) + 1, dtype=torch.float64)
        start = 0
        for row, (z, ks) in enumerate(zip(rationales, anchors, strict=True)):
            values = (joint[start : start + len(ks)] / temperature).tolist()
            out[row, : len(z) + 1] = gfn.interpolate_log_rewards(ks, values, len(z), recipe.rat_min_len)
            start += len(ks)
        return out

    def joint_log_probs(self, model: Any, prompt: Prompt, continuations: list[list[int]]) -> torch.Tensor:
        """log π(continuation | X) under the SFT model (the frozen reference copy of the adapter RGFN continued), in
        chunks. Sharded, every rank runs as many chunks as the rank with the most (the last one again, its values
        dropped): each forward pass gathers every layer from all ranks."""
        x_len = prompt.inputs["input_ids"].shape[1]
        chunk, values = max(1, self.recipe.per_device_eval_batch_size), []
        starts = list(range(0, len(continuations), chunk))
        if is_sharded(self):
            starts += starts[-1:] * (distributed.most_over_ranks(len(starts), self.args.device) - len(starts))
        with torch.no_grad(), active(model, REFERENCE):
            for start in starts:
                part = continuations[start : start + chunk]
                batch = self.batch_inputs(prompt, part)
                kept = batch["input_ids"].shape[1] - x_len + 1  # the positions that predict the continuation
                logits = model(**batch, use_cache=False, logits_to_keep=kept).logits.float()[:, :-1]
                targets = batch["input_ids"][:, x_len:]
                token_logp = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                values.append((token_logp * batch["attention_mask"][:, x_len:]).sum(1).double().cpu())
        return torch.cat(values)[: len(continuations)]

    # -- 4. the loss -------------------------------------------------------------------------------
    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **_: Any) -> Any:
        step, recipe = self.state.global_step, self.recipe
        temperature = gfn.linear_schedule(step, recipe.reward_temp_start, recipe.reward_temp_end, recipe.reward_temp_horizon)
        tolerance = gfn.linear_schedule(
            step, recipe.reward_tolerance_start, recipe.reward_tolerance_end, recipe.reward_tolerance_horizon
        )
        losses = []
        # Sampling and the rewards (no gradient) use the model itself: a data-parallel wrapper has no generate and no
        # adapters. The policy's forward goes through ``model``, whose wrapper reduces the gradients.
        policy = self.accelerator.unwrap_model(model)
        for record in inputs["records"]:
            prompt = self.prompt(record)
            rationales = [prompt.reference, *self.sample(policy, prompt)]  # row 0: the reference
            lengths = torch.tensor([len(z) for z in rationales])
            log_r = self.log_rewards(policy, prompt, rationales, temperature)
            rewards = gfn.length_normalized(log_r, lengths)
            keep = gfn.reference_filter(rewards, 0, tolerance)
            log_pf, log_pt = self.policy_terms(model, prompt, [z for z, k in zip(rationales, keep, strict=True) if k])
            kept_r = log_r[keep][:, : log_pt.shape[1]].to(log_pf.device, log_pf.dtype)  # as wide as the kept rows
            loss = gfn.subtb_loss(log_pf, log_pt, kept_r, lengths[keep].to(log_pf.device), recipe.subtb_lambda)
            if prompt.image_problem:  # a stand-in image: the same passes as the other ranks, nothing learned
                loss = loss * 0.0
            else:
                self.note(keep, rewards, lengths, temperature, tolerance)
            self.logged["rgfn/image_problems"].append(float(prompt.image_problem is not None))
            losses.append(loss)
        loss = torch.stack(losses).mean()
        return (loss, None) if return_outputs else loss

    def note(self, keep: torch.Tensor, rewards: torch.Tensor, lengths: torch.Tensor, temp: float, tol: float) -> None:
        """The curves TensorBoard shows: kept fraction, rewards of the reference vs samples, lengths, schedules."""
        for name, value in (
            ("rgfn/kept_fraction", keep[1:].float().mean().item()),
            ("rgfn/reward_reference", rewards[0].item()),
            ("rgfn/reward_samples", rewards[1:].mean().item()),
            # Untempered (log pi_SFT(Z, Y | X) per token): comparable across steps while T_s anneals. The reference's
            # is the frozen SFT model's and moves only with the prompts; the samples' falling below it means the
            # policy drifts to rationales that explain the answer worse.
            ("rgfn/sft_logp_reference", rewards[0].item() * temp),
            ("rgfn/sft_logp_samples", rewards[1:].mean().item() * temp),
            ("rgfn/length_reference", float(lengths[0])),
            ("rgfn/length_samples", lengths[1:].float().mean().item()),
            ("rgfn/reward_temperature", temp),
            ("rgfn/tolerance", tol),
        ):
            self.logged[name].append(value)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        logs = {**logs, **{k: sum(v) / len(v) for k, v in self.logged.items() if v}}
        self.logged.clear()
        super().log(logs, *args, **kwargs)


class Records(torch.utils.data.Dataset):
    """The records as the trainer's dataset: the collator hands them to ``compute_loss`` as they are."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"records": rows}


def rgfn_format(config: TrainConfig) -> ModelFormat:
    """GRPO's format rules (the continued adapter's card, else the card of a --model vcot wrote, else the base's), in
    the rationale_turn layout."""
    fmt = grpo_format(config)
    problem = rationale_turn_problem(load_processor_for(config.model))
    if problem is not None:  # before any weight loads; as tokenize refuses the layout
        raise ConfigError(f"RGFN asks the model in an {RATIONALE_ROLE} turn, and {config.model} ({fmt.family}) "
                          f"cannot render one: {problem}. Use a Qwen2.5-VL model for RGFN (docs/train.md, RGFN)")  # fmt: skip
    if fmt.layout != "rationale_turn":
        log.warning("layout_differs", adapter=config.init_adapter or None, layout=fmt.layout,
                    hint="RGFN's rewards assume an SFT model trained with tokenize --layout rationale_turn")
    return dataclasses.replace(fmt, layout="rationale_turn")


def rgfn(config: TrainConfig, recipe: Recipe) -> dict[str, Any]:
    """Train and commit an RGFN run; returns its manifest."""
    from transformers import TrainingArguments

    # 1. The model format, in the rationale_turn layout.
    fmt = rgfn_format(config)
    log.info("model_format", **fmt.to_dict(), source=config.init_adapter or config.model)

    # 2. Records with their reference rationales; the shared arguments, checked by transformers before any model
    # loads (the recipe's trainer: values last); 3. the policy (the SFT adapter continued, or a new LoRA).
    rows, skipped = read_records(config.data)
    folders = RunFolders.for_output(config.output)
    arguments = {**common_arguments(recipe, folders, machine_precision()), **held_out_arguments(recipe)}
    args = build_arguments(TrainingArguments, arguments, recipe)
    announce_cpu_run(config.model, recipe, config.recipe, rgfn_workload(recipe, len(rows)))
    model, processor = load_policy(config.model, recipe, fmt, init_adapter=config.init_adapter)
    reference_adapter(model)  # the reward's model: the policy as RL found it (the SFT adapter, not the bare base)

    # 4. The held-out slice it is watched on and the score of the model the pointer names (vcot.train.pointer);
    # the trainer: RGFN's loss.
    check_scratch(folders, recipe, model)
    watched = held_out(processor, fmt, recipe, [config.data]) if recipe.generation_eval_samples else None
    named = pointer.named_run(config)  # the run the pointer names when this run is compared with it
    pointed = pointer.pointed_score(config, model, watched, recipe.metric_for_best_model,
                                   sharded=bool(recipe.sharding))
    trainer_class = sharded_trainer(RGFNTrainer) if recipe.sharding else RGFNTrainer
    trainer = trainer_class(
        model=model, args=args, train_dataset=Records(rows), eval_dataset=watched.records if watched else None,
        data_collator=collate, processing_class=processor, recipe=recipe, fmt=fmt,
    )
    if watched:
        watch_held_out(trainer, watched, recipe)

    # 5. Train (resuming from storage); 6. commit.
    use_vision_learning_rate(trainer, recipe)
    result = run_training(trainer, folders)
    history = trainer.state.log_history
    records = {"used": len(rows), "skipped": dict(skipped)}
    metrics = {"train": result.metrics, "global_step": trainer.state.global_step, "records": records,
               "held_out": pointer.held_out_summary(
                   history, recipe.metric_for_best_model, pointed, trainer.state.best_metric, named
               ),
               "log_history": history}
    stats = {"global_step": trainer.state.global_step, "records": records, "train_loss": result.metrics.get("train_loss")}
    return commit_run(config, recipe, fmt, trainer, processor, folders, metrics=metrics, inputs=config.input_runs, stats=stats)
