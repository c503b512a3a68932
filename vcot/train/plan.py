"""Will it fit? A training run's peak memory per GPU, predicted from a recipe and a model's ``config.json``.

Accelerate's ``estimate-memory`` counts weights only, and fixed tables (LLaMA-Factory's, Unsloth's) know nothing of
a vision-language model's image tokens. The plan adds up what a step holds at its peak, part by part:

- **weights**: by dtype and quantization (NF4 with double quantization: 4 bits a weight plus its block scales; the
  embeddings, the output layer, norms and biases stay 16-bit), sharded over the GPUs with FSDP2, plus what FSDP2
  gathers whole at the peak (the output layer and two decoder layers);
- **adapter, gradients, optimizer states** of what trains (LoRA's A and B in fp32; AdamW's two moments in fp32, or
  one byte each with 8-bit AdamW);
- **activations** at the recipe's micro-batch, sequence length and pixel budget, the language model and the vision
  tower separately, with or without gradient checkpointing, and the logits of the loss: over the whole vocabulary
  at every position, or with SFT's fused LM head one tile of them over the labelled positions;
- **overhead**: the framework's own (the CUDA context and allocator slack) as a fixed figure.

The parts are counted from the model's shape (:class:`ModelShape`), never from a name, so a user's own checkpoint
is planned as the published ones are. ``vcot-plan`` prints the plan; the train stage logs it at start. The
figures are checked against the allocator on true-width slices (``bench/plan_bench.py``, docs/benchmarks.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from vcot.config import option
from vcot.errors import ConfigError, VcotError
from vcot.grounding.model_format import family_of_model_type
from vcot.models.published import text_config
from vcot.train.recipe import DEFAULT_RECIPE, LORA_TARGETS, Recipe, lora_target_regex


@dataclass(frozen=True)
class TextShape:
    """The language model's shape, as its ``config.json`` gives it."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    qkv_bias: bool
    qk_norm: bool

    def projections(self) -> dict[str, tuple[int, int]]:
        """Each decoder layer's linear projections: name -> (in features, out features)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip

    def layer_parameters(self) -> int:
        linear = sum(a * b for a, b in self.projections().values())
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        return linear + bias + 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)

    def embedding_parameters(self) -> int:
        """The input embedding and, untied, the output layer (the final norm included)."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def parameters(self) -> int:
        """The whole language model: its decoder layers, embeddings and output layer."""
        return self.layers * self.layer_parameters() + self.embedding_parameters()


@dataclass(frozen=True)
class VisionShape:
    """The vision tower's shape: Qwen2.5-VL's (gated MLP, RMSNorm, windowed attention) or Qwen3-VL's (plain MLP,
    LayerNorm, learned position embeddings, DeepStack mergers)."""

    depth: int
    hidden: int
    intermediate: int
    out_hidden: int
    patch: int
    temporal_patch: int
    merge: int
    gated: bool
    position_embeddings: int
    deepstack: int

    def block_parameters(self) -> int:
        h, i = self.hidden, self.intermediate
        attention = h * 3 * h + 3 * h + h * h + h
        mlp = (3 if self.gated else 2) * h * i + (2 * i + h if self.gated else i + h)
        norms = 2 * h if self.gated else 4 * h  # RMSNorm: a weight; LayerNorm: weight and bias
        return attention + mlp + norms

    def merger_parameters(self, *, postshuffle: bool = False) -> int:
        wide = self.hidden * self.merge**2
        norm_width = wide if postshuffle else self.hidden
        norm = norm_width if self.gated else 2 * norm_width
        return norm + wide * wide + wide + wide * self.out_hidden + self.out_hidden

    def parameters(self) -> int:
        patch = 3 * self.temporal_patch * self.patch**2 * self.hidden + (0 if self.gated else self.hidden)
        position = self.position_embeddings * self.hidden
        return patch + position + self.depth * self.block_parameters() + self.all_merger_parameters()

    def all_merger_parameters(self) -> int:
        """The merger into the language model and, in Qwen3-VL, each DeepStack tap's own."""
        return self.merger_parameters() + self.deepstack * self.merger_parameters(postshuffle=True)

    def projections(self) -> dict[str, tuple[int, int]]:
        """Each vision block's linear layers: name (as LoRA's targets end) -> (in features, out features)."""
        h, i = self.hidden, self.intermediate
        mlp = ({"mlp.gate_proj": (h, i), "mlp.up_proj": (h, i), "mlp.down_proj": (i, h)} if self.gated
               else {"mlp.linear_fc1": (h, i), "mlp.linear_fc2": (i, h)})  # fmt: skip
        return {"attn.qkv": (h, 3 * h), "attn.proj": (h, h), **mlp}

    def merger_projections(self) -> dict[str, tuple[int, int]]:
        """Each merger's linear layers where a LoRA target can name them: Qwen3-VL's are ``linear_fc1`` and
        ``linear_fc2``, as its blocks' MLP (Qwen2.5-VL's, ``mlp.0`` and ``mlp.2``, are left out)."""
        wide = self.hidden * self.merge**2
        return {} if self.gated else {"linear_fc1": (wide, wide), "linear_fc2": (wide, self.out_hidden)}

    def linear_parameters(self) -> int:
        """The parameters of the tower's and the mergers' linear layers: what 4-bit quantization packs."""
        block = sum(a * b for a, b in self.projections().values())
        wide = self.hidden * self.merge**2
        return self.depth * block + (1 + self.deepstack) * (wide * wide + wide * self.out_hidden)


@dataclass(frozen=True)
class ModelShape:
    """A model's shape from its ``config.json`` (published or a user's own): what the plan counts."""

    family: str
    text: TextShape
    vision: VisionShape

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """
        >>> from vcot.models.published import published_config
        >>> shape = ModelShape.from_config(published_config("qwen2.5-vl-7b"))
        >>> shape.family, shape.text.hidden, shape.text.kv_heads, shape.vision.depth
        ('qwen2.5-vl', 3584, 4, 32)
        """
        family = family_of_model_type(config["model_type"])
        text, vision = text_config(config), config["vision_config"]
        if text.get("num_experts"):
            raise ConfigError(f"{config['model_type']} is a mixture of experts: the plan counts dense models only; "
                              "plan a dense model of the family, or size this run by hand")
        qwen25 = family == "qwen2.5-vl"
        tied = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
        heads = text["num_attention_heads"]
        return cls(
            family=family,
            text=TextShape(
                vocab=text["vocab_size"], hidden=text["hidden_size"], intermediate=text["intermediate_size"],
                layers=text["num_hidden_layers"], heads=heads, kv_heads=text.get("num_key_value_heads", heads),
                head_dim=text.get("head_dim") or text["hidden_size"] // heads, tied=tied,
                qkv_bias=qwen25 or bool(text.get("attention_bias", False)), qk_norm=not qwen25,
            ),
            vision=VisionShape(
                depth=vision["depth"], hidden=vision["hidden_size"], intermediate=vision["intermediate_size"],
                out_hidden=vision["out_hidden_size"], patch=vision["patch_size"],
                temporal_patch=vision.get("temporal_patch_size", 2), merge=vision.get("spatial_merge_size", 2),
                gated=qwen25, position_embeddings=vision.get("num_position_embeddings", 0) if not qwen25 else 0,
                deepstack=len(vision.get("deepstack_visual_indexes") or []),
            ),
        )  # fmt: skip

    def parameters(self) -> int:
        """Every parameter of the model (what ``sum(p.numel() for p in model.parameters())`` counts).

        >>> from vcot.models.published import published_config
        >>> ModelShape.from_config(published_config("qwen2.5-vl-7b")).parameters()
        8292166656
        """
        return self.text.parameters() + self.vision.parameters()

    def lora_parameters(self, r: int, targets: list[str], *, tune_vision: bool = False) -> int:
        """LoRA's trainable parameters: ``r x (in + out)`` for every targeted projection of every decoder layer
        and, with ``tune_vision``, of every vision block's and merger's layer that the targets name (Qwen2.5-VL's
        MLP shares the language model's names; ``attn.qkv``, ``mlp.linear_fc1``, ... name the rest; a bare
        ``linear_fc1`` also names Qwen3-VL's mergers'), matched as PEFT matches them (:func:`lora_target_regex`).
        The patch embedding, which a bare ``proj`` also matches, is left out: a few thousand parameters a rank.

        >>> from vcot.models.published import published_config
        >>> shape = ModelShape.from_config(published_config("qwen2.5-vl-7b"))
        >>> shape.lora_parameters(64, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        161480704
        >>> shape.lora_parameters(64, ["qkv", "attn.proj"], tune_vision=True)  # 32 blocks x 64 x (1280 x 4 + 1280 x 2)
        15728640
        """
        per_layer = sum(r * (a + b) for name, (a, b) in self.text.projections().items() if name in targets)
        if not tune_vision:
            return self.text.layers * per_layer
        targeted = re.compile(lora_target_regex(targets, include_vision=True)).fullmatch  # PEFT's match, as trained

        def adapted(layers: dict[str, tuple[int, int]], prefix: str) -> int:
            return sum(r * (a + b) for name, (a, b) in layers.items() if targeted(f"model.visual.{prefix}.{name}"))

        mergers = self.vision.merger_projections()
        return (self.text.layers * per_layer + self.vision.depth * adapted(self.vision.projections(), "blocks.0")
                + adapted(mergers, "merger") + self.vision.deepstack * adapted(mergers, "deepstack_merger_list.0"))

    def quantized_parameters(self) -> int:
        """The parameters 4-bit quantization packs: every linear layer's weight but the output layer's."""
        text = self.text.layers * sum(a * b for a, b in self.text.projections().values())
        return text + self.vision.linear_parameters()

    def quantized_modules(self) -> int:
        """How many linear layers 4-bit quantization replaces (all but the output layer)."""
        vision_linear = 5 if self.vision.gated else 4
        mergers = 2 * (1 + self.vision.deepstack)
        return self.text.layers * len(self.text.projections()) + self.vision.depth * vision_linear + mergers


def recipe_lora_parameters(shape: ModelShape, recipe: Recipe) -> int:
    """The trainable parameters of a new LoRA adapter of ``recipe`` on ``shape``."""
    targets = recipe.lora_target_modules or LORA_TARGETS
    return shape.lora_parameters(recipe.lora_r, targets, tune_vision=recipe.tune_vision)


# --------------------------------------------------------------------------------------------------
# The memory plan
# --------------------------------------------------------------------------------------------------

GIB = 2**30
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
"""Bytes per 4-bit weight: 4 bits, an 8-bit scale per 64-weight block and, with double quantization, an fp32
scale per 256 of those (bitsandbytes' NF4)."""
CUDA_OVERHEAD_GIB = 1.0
"""The CUDA context, kernels and the caching allocator's slack, per GPU (none on a CPU)."""
PROMPT_TEXT_TOKENS = 128
"""The text of a prompt beside its image (system turn, question, options, instruction)."""
PLAN_PIXELS = 1280 * 28 * 28
"""The pixel budget planned for when none is given: Qwen's own recommendation (1,280 image tokens at most)."""


@dataclass(frozen=True)
class Workload:
    """What one micro-batch of a training step holds: ``batch`` sequences of ``tokens`` tokens, of which
    ``image_tokens`` are one image's (``patches`` vision patches), the loss over ``loss_tokens`` of them; GRPO and
    RGFN also generate (a KV cache over ``generated`` sequences)."""

    batch: int
    tokens: int
    image_tokens: int
    patches: int
    loss_tokens: int
    generated: int = 0


def image_tokens(shape: ModelShape, max_pixels: int) -> tuple[int, int]:
    """An image at the pixel budget: its language-model tokens and its vision patches.

    >>> from vcot.models.published import published_config
    >>> image_tokens(ModelShape.from_config(published_config("qwen2.5-vl-7b")), 1280 * 28 * 28)
    (1280, 5120)
    """
    patches = max_pixels // shape.vision.patch**2
    return patches // shape.vision.merge**2, patches - patches % shape.vision.merge**2


def workload(
    shape: ModelShape, recipe: Recipe, *, max_pixels: int = PLAN_PIXELS, seq_len: int | None = None
) -> Workload:
    """The recipe's micro-batch at a pixel budget: SFT rows of ``seq_len`` tokens (tokenize's ``max_length``,
    2048, by default: the longest row a batch can hold), GRPO's prompt and completion, RGFN's prompt and rationale."""
    image, patches = image_tokens(shape, max_pixels)
    prompt = image + PROMPT_TEXT_TOKENS
    if recipe.method == "grpo":
        tokens = seq_len or prompt + recipe.max_completion_length
        return Workload(recipe.per_device_train_batch_size, tokens, image, patches, tokens - prompt,
                        generated=recipe.per_device_train_batch_size * recipe.gradient_accumulation_steps)  # fmt: skip
    if recipe.method == "gfn":
        tokens = seq_len or prompt + recipe.rat_max_len
        trajectories = recipe.explore_nums + 1
        return Workload(trajectories * recipe.per_device_train_batch_size, tokens, image, patches, tokens - prompt,
                        generated=recipe.explore_min_bs)  # fmt: skip
    tokens = seq_len or 2048
    # Without the fused head the model computes logits at every position and the loss masks them afterwards; the
    # fused head scores the answer's positions only (the prompt and image tokens have no label).
    loss_tokens = max(tokens - image - PROMPT_TEXT_TOKENS, 1) if fused_head(recipe) else tokens
    return Workload(recipe.per_device_train_batch_size, tokens, min(image, tokens), patches, loss_tokens)


@dataclass(frozen=True)
class Plan:
    """Peak memory per GPU, part by part (bytes), and whether it fits."""

    parts: dict[str, float]
    gpu_memory_gib: float
    gpus: int

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_memory_gib * GIB

    def to_dict(self) -> dict[str, Any]:
        parts = {k: round(v / GIB, 3) for k, v in self.parts.items()}
        return {"parts_gib": parts, "total_gib": round(self.total / GIB, 2), "gpu_memory_gib": self.gpu_memory_gib,
                "gpus": self.gpus, "fits": self.fits}  # fmt: skip


def weight_bytes(shape: ModelShape, recipe: Recipe, dtype_bytes: int, gpus: int) -> float:
    """The base model's weights on one GPU: 4-bit (NF4) or 8-bit linear layers and 16-bit rest, or all 16-bit;
    sharded over ``gpus`` with FSDP2."""
    total, packed = shape.parameters(), shape.quantized_parameters()
    if recipe.quantize == "4bit":
        return packed * NF4_BYTES + (total - packed) * dtype_bytes
    if recipe.quantize == "8bit":
        return packed * (1 + 4 / 4096) + (total - packed) * dtype_bytes
    return total * dtype_bytes / (gpus if recipe.sharding else 1)


def trainable_parameters(shape: ModelShape, recipe: Recipe) -> int:
    """LoRA's, or with ``finetune: full`` the language model's and the merger's (+ the vision tower's)."""
    if recipe.finetune == "full":
        vision = shape.vision.parameters() if recipe.tune_vision else shape.vision.all_merger_parameters()
        return shape.text.parameters() + vision
    return recipe_lora_parameters(shape, recipe)


def text_layer_activation_bytes(shape: ModelShape, recipe: Recipe, tokens: int, dtype_bytes: int) -> float:
    """What one decoder layer keeps for its backward pass, for ``tokens`` tokens: the norms' inputs and outputs, q,
    k and v (and their rotated copies), the attention output, the MLP's gate, up, activation and product, the
    residuals; with LoRA, each target's dropped-out input (when dropout is on) and its rank-r intermediate."""
    text = shape.text
    q, kv, h, i = text.heads * text.head_dim, text.kv_heads * text.head_dim, text.hidden, text.intermediate
    dense = 6 * h + 3 * q + 3 * kv + 4 * i
    lora = 0
    if recipe.finetune == "lora":
        inputs = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": q, "gate_proj": h, "up_proj": h, "down_proj": i}
        targeted = [name for name in inputs if name in (recipe.lora_target_modules or LORA_TARGETS)]
        lora = len(targeted) * recipe.lora_r + (sum(inputs[n] for n in targeted) if recipe.lora_dropout > 0 else 0)
    return tokens * (dense + lora) * dtype_bytes


def activation_bytes(
    shape: ModelShape, recipe: Recipe, load: Workload, dtype_bytes: int, device: str = "cuda"
) -> dict[str, float]:
    """The language model's stored activations (every layer's input with gradient checkpointing, plus one layer
    recomputed), the logits of the loss (the model's dtype, their fp32 copy unless they are fp32 already, and the
    log-softmax the loss keeps for its backward pass), and the vision
    tower's: only its output when it is frozen (no gradient flows into it), every block's when it trains."""
    tokens = load.batch * load.tokens
    layer = text_layer_activation_bytes(shape, recipe, tokens, dtype_bytes)
    layers = shape.text.layers
    if recipe.gradient_checkpointing:
        text = layers * tokens * shape.text.hidden * dtype_bytes + layer
    else:
        text = layers * layer
    if fused_head(recipe):
        trains_head = recipe.finetune == "full" or "lm_head" in (recipe.modules_to_save or [])
        logits = fused_head_bytes(shape, load, dtype_bytes, triton=device == "cuda", trains_head=trains_head)
    else:
        logit_bytes = dtype_bytes + (4 if dtype_bytes < 4 else 0) + 4  # the logits, their fp32 copy, the log-softmax
        logits = load.batch * load.loss_tokens * shape.text.vocab * logit_bytes
    v = shape.vision
    block = load.batch * load.patches * (6 * v.hidden + (3 if v.gated else 2) * v.intermediate) * dtype_bytes
    trains_vision = recipe.tune_vision or recipe.finetune == "full"
    vision = (v.depth if trains_vision and not recipe.gradient_checkpointing else 1) * block
    return {"activations_language_model": text, "activations_logits": logits, "activations_vision": vision}


FUSED_TILE = (4096, 32768)
"""Positions and vocabulary entries of one tile of TRL's fused LM head (``TOKEN_CHUNK_SIZE`` and
``_CHUNKED_LOGPROB_CHUNK_SIZE`` in TRL; a test checks they still are)."""


def fused_head(recipe: Recipe) -> bool:
    """Whether the run scores its loss through the fused LM head: SFT with ``fused_lm_head``, not with label
    smoothing (which needs the logits) or a LoRA on the output layer (``vcot.train.sft.fused_head_problem``)."""
    smoothing = recipe.trainer.get("label_smoothing_factor")
    head_adapter = "lm_head" in str(recipe.peft.get("target_modules", ""))
    return recipe.method == "sft" and recipe.fused_lm_head and not (smoothing or head_adapter)


def fused_head_bytes(
    shape: ModelShape, load: Workload, dtype_bytes: int, *, triton: bool = True, trains_head: bool = False
) -> float:
    """What SFT's fused LM head holds at its peak (the backward pass): tiles of logits, the positions' hidden states
    it gathered, their fp32 gradient, and the output layer's fp32 gradient when it trains (``trains_head``); no
    ``(batch, tokens, vocab)`` logits. With Triton (a GPU) it scores the labelled positions alone and folds each
    tile in a kernel: one tile at a time. Without (a CPU) it scores every position, and its torch fallback holds
    about four tiles at once (measured on slices).

    >>> from vcot.models.published import published_config
    >>> shape = ModelShape.from_config(published_config("qwen2.5-vl-7b"))
    >>> round(fused_head_bytes(shape, Workload(4, 2048, 1024, 4096, 600), 2) / GIB, 3)
    0.195
    >>> round(fused_head_bytes(shape, Workload(1, 1634, 1024, 4096, 482), 4, triton=False) / GIB, 2)
    0.84
    """
    positions = load.batch * (load.loss_tokens if triton else load.tokens)
    tile = min(positions, FUSED_TILE[0]) * min(shape.text.vocab, FUSED_TILE[1]) * dtype_bytes
    head_gradient = shape.text.vocab * shape.text.hidden * 4 if trains_head else 0
    return (1 if triton else 4) * tile + positions * shape.text.hidden * (dtype_bytes + 4) + head_gradient


def generation_bytes(shape: ModelShape, recipe: Recipe, load: Workload, dtype_bytes: int) -> float:
    """GRPO's and RGFN's sampling: the KV cache of the sequences generated at once (on the GPU beside training
    unless vLLM runs the rollouts: then vLLM's share of the GPU, ``vllm_gpu_memory_utilization``)."""
    if not load.generated:
        return 0.0
    text = shape.text
    return load.generated * load.tokens * text.layers * 2 * text.kv_heads * text.head_dim * dtype_bytes


def gathered_bytes(shape: ModelShape, recipe: Recipe, dtype_bytes: int, shards: int) -> float:
    """FSDP2's all-gathered weights at the peak, less the rank's own shard (counted in ``weights``): the output
    layer (its unit stays gathered from the loss into the backward), the decoder layer computing and the next one
    prefetched; with ``reshard_after_forward: false`` every unit stays gathered from its forward to its backward.

    >>> from vcot.models.published import published_config
    >>> shape = ModelShape.from_config(published_config("qwen2.5-vl-7b"))
    >>> gathered_bytes(shape, Recipe(), 2, 1)
    0.0
    >>> sharded = Recipe(sharding="fsdp2", quantize=None, optim="adamw_torch")
    >>> round(gathered_bytes(shape, sharded, 2, 2) / 2**30, 2), round(gathered_bytes(shape, sharded, 2, 8) / 2**30, 2)
    (0.94, 1.65)
    """
    if not recipe.sharding or shards == 1:
        return 0.0
    text = shape.text
    output_layer = text.vocab * text.hidden
    units = shape.parameters() if not recipe.reshard_after_forward else output_layer + 2 * text.layer_parameters()
    return units * dtype_bytes * (1 - 1 / shards)


def optimizer_bytes(recipe: Recipe, dtype_bytes: int) -> int:
    """AdamW's state per trainable parameter: one byte a moment in 8-bit; in 32-bit, fp32 moments for LoRA's fp32
    matrices, the weights' own dtype for a full fine-tune (no fp32 master copy is kept) unless sharded (fp32
    master weights, fp32 moments).

    >>> optimizer_bytes(Recipe(optim="adamw_torch"), 2), optimizer_bytes(Recipe(optim="adamw_8bit"), 2)
    (8, 2)
    """
    state = recipe.optimizer_state_bytes
    return 2 * dtype_bytes if recipe.finetune == "full" and state == 8 and not recipe.sharding else state


def plan(
    shape: ModelShape,
    recipe: Recipe,
    *,
    gpus: int | None = None,
    gpu_memory_gib: float | None = None,
    max_pixels: int = PLAN_PIXELS,
    seq_len: int | None = None,
    device: str = "cuda",
) -> Plan:
    """The peak memory of one GPU (or of the CPU process, ``device="cpu"``: fp32 weights, no CUDA overhead) for
    ``recipe`` on ``shape``; ``gpus`` and ``gpu_memory_gib`` default to what the recipe was planned for."""
    gpus = gpus or recipe.gpus
    gpu_memory_gib = gpu_memory_gib or recipe.gpu_memory_gib
    dtype_bytes = 2 if device == "cuda" else 4
    shards = gpus if recipe.sharding else 1
    trainable, lora = trainable_parameters(shape, recipe), recipe.finetune == "lora"
    load = workload(shape, recipe, max_pixels=max_pixels, seq_len=seq_len)
    # A full fine-tune trains the weights in their own dtype (no fp32 master copy), but sharded: FSDP2's mixed
    # precision keeps what trains in fp32 (accelerate upcasts it) and computes in 16-bit.
    master = not lora and recipe.sharding is not None
    trained_bytes = 4 if lora or master else dtype_bytes
    master_copy = trainable * (4 - dtype_bytes) / shards if master else 0.0
    parts = {
        "weights": weight_bytes(shape, recipe, dtype_bytes, gpus) + master_copy,
        "adapter": trainable * 4 / shards if lora else 0.0,  # LoRA's A and B in fp32
        "gradients": trainable * trained_bytes / shards,
        "optimizer": trainable * optimizer_bytes(recipe, dtype_bytes) / shards,
        "gathered_weights": gathered_bytes(shape, recipe, dtype_bytes, shards),
        **activation_bytes(shape, recipe, load, dtype_bytes, device),
        "generation_kv_cache": generation_bytes(shape, recipe, load, dtype_bytes),
    }
    if device == "cuda":
        if recipe.method == "grpo" and recipe.use_vllm:
            parts["vllm"] = recipe.vllm_gpu_memory_utilization * gpu_memory_gib * GIB
            parts["generation_kv_cache"] = 0.0
        parts["framework_overhead"] = CUDA_OVERHEAD_GIB * GIB
    return Plan(parts, gpu_memory_gib, gpus)


# --------------------------------------------------------------------------------------------------
# What to change when it does not fit, and vcot-plan
# --------------------------------------------------------------------------------------------------


def smallest_fix(shape: ModelShape, recipe: Recipe, **plan_args: Any) -> str | None:
    """The first change, in order of what it costs the run, that makes ``recipe`` fit: a smaller micro-batch (the
    global batch kept by accumulation), a smaller pixel budget, a 4-bit base on one copy per GPU, more GPUs with
    sharding. Each is a ``--set`` a user can pass as written."""
    candidates: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    batch, accumulation = recipe.per_device_train_batch_size, recipe.gradient_accumulation_steps
    while batch > 1 and batch % 2 == 0:
        batch, accumulation = batch // 2, accumulation * 2
        if recipe.global_batch_size:  # the accumulation follows from the global batch on any GPU count
            kept = f"(global_batch_size={recipe.global_batch_size} kept by accumulation)"
            candidates.append(
                (f"per_device_train_batch_size={batch} {kept}", {"per_device_train_batch_size": batch}, {})
            )
        else:
            candidates.append((f"per_device_train_batch_size={batch},gradient_accumulation_steps={accumulation} (the "
                               "same global batch)", {"per_device_train_batch_size": batch,
                               "gradient_accumulation_steps": accumulation}, {}))  # fmt: skip
    pixels = plan_args.get("max_pixels", PLAN_PIXELS)
    for fraction in (2, 4):
        candidates.append((f"max_pixels={pixels // fraction} (tokenize --max-pixels)", {},
                           {"max_pixels": pixels // fraction}))  # fmt: skip
    if recipe.quantize is None and recipe.finetune == "lora":
        candidates.append(("sharding=null,quantize=4bit,optim=adamw_8bit (QLoRA, a whole copy per GPU)",
                           {"sharding": None, "quantize": "4bit", "optim": "adamw_8bit"}, {}))  # fmt: skip
    sharded = {"sharding": "fsdp2", "quantize": None, "optim": "adamw_torch", "use_vllm": False}  # (recipe.py)
    sharded_text = ",".join(f"{key}={'null' if v is None else str(v).lower()}" for key, v in sharded.items())
    for gpus in (2, 4, 8, 16):
        if gpus > (plan_args.get("gpus") or recipe.gpus):
            candidates.append((f"{gpus} GPUs with {sharded_text} (sharded training, docs/train.md)", sharded,
                               {"gpus": gpus}))  # fmt: skip
    for label, changes, extra in candidates:
        try:
            changed = replace(recipe, **changes)  # the recipe's own checks: a change it refuses is no fix
        except VcotError:
            continue
        if plan(shape, changed, **{**plan_args, **extra}).fits:
            return label
    return None


def read_model_config(model: str) -> dict[str, Any]:
    """A model's ``config.json``: a published name (``qwen2.5-vl-7b``) or hub id (``Qwen/Qwen2.5-VL-7B-Instruct``), a
    folder or ``s3://`` prefix holding one, or the file itself."""
    from vcot.io import storage
    from vcot.models.published import provenance, published_config, published_names

    for name in published_names():
        if model in (name, provenance(name)["checkpoint"]):
            return published_config(name)
    uri = model if model.endswith(".json") else storage.join(model, "config.json")
    if not storage.exists(uri):
        raise ConfigError(f"no config.json at {uri}: pass a model folder, its config.json, an s3:// prefix or one of "
                          f"{', '.join(published_names())}")  # fmt: skip
    return storage.read_json(uri)


@dataclass
class PlanConfig:
    """Will a training run fit? Peak memory per GPU of a recipe on a model, part by part."""

    model: str = option(
        help="The model: a published name (qwen2.5-vl-7b ...), a folder or s3:// prefix with its config.json, or "
        "the file."
    )
    recipe: str = option(DEFAULT_RECIPE, help="Recipe preset or YAML file/URI (as vcot-train's --recipe).")
    set: str = option("", help="Recipe overrides, as vcot-train's --set: 'per_device_train_batch_size=2'.")
    gpus: int = option(0, help="GPUs (0: the recipe's planned gpus).")
    gpu_memory_gib: float = option(0.0, help="Memory of each GPU in GiB (0: the recipe's planned gpu_memory_gib).")
    max_pixels: int = option(PLAN_PIXELS, help="Pixel budget of an image (tokenize's --max-pixels).")
    seq_len: int = option(
        0, help="Tokens per sequence (0: SFT 2048, tokenize's max_length; GRPO/RGFN: prompt + completion)."
    )
    json: bool = option(False, help="Print the plan as one JSON object (for scripts).")

    def __post_init__(self) -> None:
        if self.gpus < 0 or self.gpu_memory_gib < 0 or self.seq_len < 0 or self.max_pixels <= 0:
            raise ValueError("--gpus, --gpu-memory-gib and --seq-len must be >= 0, --max-pixels > 0")


def plan_command(config: PlanConfig) -> dict[str, Any]:
    """Print the plan (a table, or JSON with ``--json``) and return it."""
    import json as json_module

    from vcot.train.recipe import load_recipe

    recipe = load_recipe(config.recipe, config.set)
    shape = ModelShape.from_config(read_model_config(config.model))
    args = {"gpus": config.gpus or None, "gpu_memory_gib": config.gpu_memory_gib or None,
            "max_pixels": config.max_pixels, "seq_len": config.seq_len or None}  # fmt: skip
    result = plan(shape, recipe, **args)
    out = {"recipe": config.recipe, "model": config.model, "parameters": shape.parameters(),
           "trainable": trainable_parameters(shape, recipe), **result.to_dict(),
           "fix": None if result.fits else smallest_fix(shape, recipe, **{k: v for k, v in args.items() if v})
           }  # fmt: skip
    if config.json:
        print(json_module.dumps(out))
        return out
    size = f"{out['parameters'] / 1e9:.2f}B parameters, {out['trainable'] / 1e6:.1f}M trainable"
    print(f"{config.recipe} on {config.model}: {size}; per GPU ({result.gpus} x {result.gpu_memory_gib:g} GiB):")
    for part, gib in out["parts_gib"].items():
        print(f"  {part:<28} {gib:8.2f} GiB")
    verdict = "fits" if result.fits else f"does NOT fit; smallest change that fits: {out['fix'] or 'none found'}"
    print(f"  {'total':<28} {out['total_gib']:8.2f} GiB: {verdict}")
    return out


def machine_memory_gib() -> tuple[str, float]:
    """This machine's device and the memory a run has there: the GPU's, else the host's physical memory."""
    import os

    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB
    return "cpu", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def log_plan(model_uri: str, recipe: Recipe, *, world_size: int = 1) -> Plan | None:
    """The train stage's first word on memory: the plan on this machine (a warning, with the smallest change that
    fits, when it cannot hold it). Advice only: a model whose configuration cannot be read is noted, never fatal."""
    from vcot.log import get_logger

    log = get_logger(__name__)
    try:
        shape = ModelShape.from_config(read_model_config(model_uri))
        device, memory = machine_memory_gib()
        result = plan(shape, recipe, gpus=world_size, gpu_memory_gib=round(memory, 1), device=device)
        fix = None if result.fits else smallest_fix(shape, recipe, gpus=world_size, gpu_memory_gib=round(memory, 1),
                                                    device=device)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the plan is advice, never the reason a run fails
        reason = str(exc).splitlines()[0][:200] if str(exc) else repr(exc)
        log.info("memory_plan", model=model_uri, plan=None, reason=reason)
        return None
    fields = {"model": model_uri, "device": device, **result.to_dict()}
    if result.fits:
        log.info("memory_plan", **fields)
    else:
        log.warning("memory_plan", **fields, hint=f"the plan exceeds this {device}'s memory: {fix or 'see vcot-plan'}")
    return result
