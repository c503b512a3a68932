"""Load a base model (+ optional adapter) and its processor, the same way in train and evaluate.

Where the model comes from: a local folder, an ``s3://`` prefix (synced once into a local cache), or a hub
id when the hub answers (else its copy in the local hub cache, else a one-line error in seconds); one that cannot
be loaded from there is a one-line :class:`VcotError`. How it
is loaded depends on the machine:

- CUDA with Unsloth installed: Unsloth's ``FastVisionModel`` (its fused kernels, 4-bit when asked);
- CUDA otherwise: transformers, with bitsandbytes NF4 + double quantization when ``quantize="4bit"``,
  compute in bf16 where the GPU supports it, else fp16;
- CPU: fp32 and no quantization unless asked (bf16 on CPU is several times slower, NOTES).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import constants as hf_constants
from huggingface_hub import get_session, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled
from safetensors import SafetensorError
from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLProcessor, Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin

from vcot.errors import ConfigError, VcotError
from vcot.grounding.families import Family
from vcot.grounding.model_format import ModelFormat, family_of_model_type
from vcot.io import storage
from vcot.io.layout import MODEL_CARD
from vcot.log import get_logger
from vcot.progress import track

Quantize = Literal["4bit", "8bit"]

log = get_logger(__name__)


# --------------------------------------------------------------------------------------------------
# The image-only processor
# --------------------------------------------------------------------------------------------------


def _image_only_init(
    processor: ProcessorMixin, image_processor: Any, tokenizer: Any, chat_template: str | None
) -> None:
    """What the Qwen processors' ``__init__`` sets up, without the video processor (it needs torchvision)."""
    processor.image_token, processor.video_token = "<|image_pad|>", "<|video_pad|>"
    processor.vision_start_token, processor.vision_end_token = "<|vision_start|>", "<|vision_end|>"
    for name in ("image_token", "video_token", "vision_start_token", "vision_end_token"):
        setattr(processor, f"{name}_id", tokenizer.convert_tokens_to_ids(getattr(processor, name)))
    ProcessorMixin.__init__(processor, image_processor, tokenizer, chat_template=chat_template)


class ImageOnlyQwen25VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor (which needs torchvision, absent on CPU machines).

    Registered with ``AutoProcessor`` below, so a saved folder whose ``processor_config.json`` names this
    class loads back as it (unregistered, ``AutoProcessor`` silently returns a bare tokenizer).
    """

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ):
        _image_only_init(self, image_processor, tokenizer, chat_template)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without the video processor, for the same reason and registered the same way."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ):
        _image_only_init(self, image_processor, tokenizer, chat_template)


AutoProcessor.register("vcot_image_only_qwen2_5_vl", ImageOnlyQwen25VLProcessor, exist_ok=True)
AutoProcessor.register("vcot_image_only_qwen3_vl", ImageOnlyQwen3VLProcessor, exist_ok=True)

IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_5_vl": ImageOnlyQwen25VLProcessor,
    "qwen3_vl": ImageOnlyQwen3VLProcessor,
}
"""The model types (``config.json``) vcot can build a processor for without torchvision."""


def official_chat_template(model_type: str) -> str:
    """The official chat template of a model type, from the copy TRL ships (no hub, and TRL is not imported).

    TRL names its copies by model type (``trl/chat_templates/qwen3_vl.jinja``) and checks them against the hub.
    """
    spec = importlib.util.find_spec("trl")
    if spec is None or spec.origin is None:
        raise VcotError(
            "trl is not installed (its chat templates are the official ones): make install, "
            "or pip install -e '.[train]' from the repository root"
        )
    return (Path(spec.origin).parent / "chat_templates" / f"{model_type}.jinja").read_text(encoding="utf-8")


def load_processor(path: str) -> Any:
    """The processor saved at ``path``; a real Qwen checkpoint on a machine without torchvision gets the image-only one.

    Which one is read from the saved ``config.json`` (its ``model_type``), never guessed.
    """
    try:
        processor = AutoProcessor.from_pretrained(path)
    except (ImportError, ValueError, OSError) as exc:  # the video processor needs torchvision
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.info("processor_fallback", path=path, reason=reason[:200])
        processor = None
    if isinstance(processor, ProcessorMixin) and getattr(processor, "image_processor", None) is not None:
        return processor
    from transformers import AutoConfig, AutoTokenizer, Qwen2VLImageProcessorPil

    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in IMAGE_ONLY_PROCESSORS:
        raise VcotError(
            f"{path} holds a {model_type} model, which vcot cannot load a processor for: "
            f"use one of the model types {', '.join(IMAGE_ONLY_PROCESSORS)}"
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    template_file = Path(path) / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.exists() else None
    return IMAGE_ONLY_PROCESSORS[model_type](
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(path),
        tokenizer=tokenizer,
        chat_template=template or getattr(tokenizer, "chat_template", None) or official_chat_template(model_type),
    )


# --------------------------------------------------------------------------------------------------
# Where the weights are
# --------------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """Local cache for models synced from S3: ``VCOT_MODEL_CACHE``, else ``$XDG_CACHE_HOME/vcot/models`` (the
    image points it at the pods' writable ``/cache``: their home is read-only), else ``~/.cache/vcot/models``."""
    if os.environ.get("VCOT_MODEL_CACHE"):
        return Path(os.environ["VCOT_MODEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vcot" / "models"


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def local_model_path(uri: str, *, weights: bool = True) -> str:
    """A path ``from_pretrained`` can read: a local folder as is, an ``s3://`` prefix synced into the cache
    (without the weight files when ``weights`` is false: enough for the processor), anything else a hub id
    (:func:`hub_model_path`: refused at once when the hub cannot be reached and the model is not cached)."""
    if storage.is_s3(uri):
        prefix = uri.rstrip("/")
        name = prefix.rsplit("/", 1)[-1] or "model"
        dest = cache_root() / f"{name}-{hashlib.sha256(prefix.encode()).hexdigest()[:12]}"
        if not storage.list_uris(prefix):
            raise VcotError(f"no model files under {prefix}: check the URI (it should hold config.json or an adapter)")
        storage.download_prefix(prefix, dest, skip_suffixes=() if weights else WEIGHT_SUFFIXES)
        return str(dest)
    path = storage.local_path(uri)
    if path.exists():
        return str(path)
    if uri.startswith(("/", ".", "file://")):
        raise VcotError(f"model folder {uri} does not exist: build one (python -m vcot.dev.tiny_model DIR) or fix the path")
    return hub_model_path(uri)


HUB_PROBE_TIMEOUT_S = 5.0
"""How long the one request that tells whether the hub answers may take (a hub that answers does so in well under a
second; huggingface_hub's own retries take about 3 minutes to give up on a hub it cannot reach)."""


@functools.cache
def hub_reachable(endpoint: str) -> bool:
    """Whether the hub at ``endpoint`` answers at all (any HTTP status), through the proxies the environment sets.
    Asked once per process and endpoint."""
    import httpx2  # huggingface_hub's HTTP client

    try:
        get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT_S)
    except (httpx2.TransportError, OfflineModeIsEnabled):
        return False
    return True


def hub_model_path(repo_id: str) -> str:
    """A hub id as ``from_pretrained`` should get it: the id when the hub answers, else (or with ``HF_HUB_OFFLINE=1``)
    the copy in the local hub cache, else a one-line :class:`VcotError` at once instead of minutes of retries."""
    if not hf_constants.is_offline_mode() and hub_reachable(hf_constants.ENDPOINT):
        return repo_id
    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, ValueError):  # not cached; or not a valid hub id
        endpoint = hf_constants.ENDPOINT
        reason = "HF_HUB_OFFLINE is set" if hf_constants.is_offline_mode() else f"{endpoint} does not answer"
        raise VcotError(
            f"cannot load model {repo_id}: no such folder here, and the hub cannot be reached ({reason}; no copy in "
            "the local hub cache): pass a folder holding config.json and the tokenizer "
            f"(hf download {repo_id} --local-dir DIR, where there is network) or an s3:// copy of one"
        ) from None


LOAD_ERRORS = (OSError, ValueError, EntryNotFoundError)
"""What ``from_pretrained`` raises for a wrong model: missing files, no network for a hub id (OSError,
huggingface_hub's HTTP and offline errors included), an invalid hub id or config (ValueError)."""


@contextmanager
def load_errors(uri: str, *, what: str = "model") -> Iterator[None]:
    """Turn a failed ``from_pretrained`` of ``uri`` into a one-line :class:`VcotError` that says what to pass (a
    :class:`ConfigError`, exit 2, for a corrupt weights file: no retry reads it otherwise)."""
    try:
        yield
    except SafetensorError as exc:  # a truncated or overwritten weights file: loading it again gives the same
        reason = (str(exc).strip().splitlines() or ["unreadable"])[0][:300]
        raise ConfigError(
            f"{what} {uri} has a corrupt weights file ({reason}): write it again (the run that made it), or pass "
            f"another {what}"
        ) from None
    except LOAD_ERRORS as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if what == "adapter":
            hint = "pass the adapter/ folder (or s3:// prefix) of a committed train run"
        else:
            hint = "pass a folder or s3:// prefix holding config.json and the tokenizer"
        raise VcotError(f"cannot load {what} {uri}: {reason}; {hint}") from exc


def load_processor_for(model_uri: str) -> Any:
    """Just the processor of ``model_uri`` (no weights are fetched): what tokenize needs."""
    path = local_model_path(model_uri, weights=False)
    with load_errors(model_uri):
        return load_processor(path)


def model_family(model_uri: str) -> Family:
    """The family of ``model_uri`` from its ``config.json`` ``model_type`` (never from a name the user typed)."""
    path = Path(local_model_path(model_uri, weights=False))
    config_file = path / "config.json"
    if not config_file.exists():
        with load_errors(model_uri):
            from transformers import AutoConfig

            return family_of_model_type(AutoConfig.from_pretrained(str(path)).model_type)
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type", "")
    try:
        return family_of_model_type(model_type)
    except ValueError as exc:
        raise VcotError(f"{model_uri}: {exc}") from exc


def read_model_card(adapter_uri: str) -> dict[str, Any]:
    """The ``vcot-model.json`` next to an adapter: ``base_model``, its ``base_architecture`` and ``model_format``."""
    return storage.read_json(storage.join(adapter_uri, MODEL_CARD))


def full_finetune_model(adapter_uri: str) -> str | None:
    """The ``model/`` of a full fine-tune's run when ``adapter_uri`` is where that run's adapter would be (the run
    has ``model/`` with a card and no ``adapter/``), else ``None``."""
    model = storage.join(storage.parent(adapter_uri), "model")
    if storage.exists(storage.join(adapter_uri, MODEL_CARD)) or not storage.exists(storage.join(model, MODEL_CARD)):
        return None
    return model


def refuse_full_finetune(adapter_uri: str, *, flag: str) -> None:
    """A full fine-tune's run has ``model/`` and no ``adapter/``: say to pass that model, not that a card is missing."""
    model = full_finetune_model(adapter_uri)
    if model is not None:
        raise ConfigError(f"{storage.parent(model)} is a full fine-tune: pass --model {model} without {flag}")


def adapter_format(adapter_uri: str) -> ModelFormat | None:
    """The model format recorded next to an adapter (any layout vcot wrote), or ``None`` when there is no card."""
    if not storage.exists(storage.join(adapter_uri, MODEL_CARD)):
        return None
    try:
        return ModelFormat.from_dict(read_model_card(adapter_uri))
    except (ValueError, TypeError, KeyError) as exc:
        raise VcotError(f"{adapter_uri}/{MODEL_CARD} is not a model card vcot can read ({exc}): re-run train") from exc


ARCHITECTURE_KEYS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "depth", "num_heads", "out_hidden_size", "in_channels", "patch_size",
    "spatial_merge_size", "temporal_patch_size",
)  # fmt: skip


def architecture(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The fields of a model config that fix its weights' shapes, nested configs flattened: an adapter
    loads onto a base model only where they agree (the model card records the base's).

    >>> architecture({"model_type": "m", "dtype": "bfloat16", "text_config": {"hidden_size": 64}})
    {'model_type': 'm', 'text_config.hidden_size': 64}
    """
    found: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            found.update(architecture(value, f"{prefix}{key}."))
        elif key in ARCHITECTURE_KEYS:
            found[prefix + key] = value
    return found


def check_base_model(card: dict[str, Any], model_uri: str) -> None:
    """Refuse, in one line (exit code 2), a base model other than the one the adapter was trained on.

    The card's ``base_model`` may name the same model by another URI (a local copy of an s3:// prefix), so
    the architecture is compared, read from ``model_uri``'s config alone (no weights are fetched). A card
    without one (an older train) is checked when the adapter loads: see :func:`load_model_and_processor`.
    """
    expected = card.get("base_architecture") or {}
    if not expected:
        return
    path = local_model_path(model_uri, weights=False)
    with load_errors(model_uri):
        found = architecture(AutoConfig.from_pretrained(path).to_dict())
    differing = [key for key in expected if key in found and found[key] != expected[key]]
    if differing:
        shown = "; ".join(f"{key}: {found[key]}, not {expected[key]}" for key in differing[:3])
        raise ConfigError(
            f"--model {model_uri} is not the base model the adapter was trained on ({shown}): "
            f"pass --model {card.get('base_model')} or the adapter trained on this model"
        )


@contextmanager
def _adapter_fits(adapter_uri: str, model_uri: str) -> Iterator[None]:
    """PEFT's size mismatch (thousands of lines, one per tensor) as one line."""
    try:
        yield
    except RuntimeError as exc:
        if "size mismatch" not in str(exc):
            raise
        raise ConfigError(
            f"adapter {adapter_uri} does not fit the base model {model_uri} (other weight shapes): pass the "
            f"--model it was trained on (base_model in its {MODEL_CARD})"
        ) from None


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def parameter_count(model_uri: str) -> int:
    """The base model's parameters, from its ``config.json`` alone: the model built on torch's meta device (no
    weights fetched, no memory; ~3 s for a 7B), so a run can say what it is about to load before it does."""
    import torch
    from transformers import AutoModelForImageTextToText

    path = local_model_path(model_uri, weights=False)
    with load_errors(model_uri), torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(path))
    return sum(parameter.numel() for parameter in model.parameters())


def weight_files(path: str) -> list[Path]:
    """The weight shards of a local model folder (what loading reads), sorted."""
    folder = Path(path)
    return sorted(p for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)) if folder.is_dir() else []


@contextmanager
def weights_progress(model_uri: str) -> Iterator[None]:
    """transformers 5 loads (casts, quantizes) every tensor of every shard in one loop with a tqdm bar of its own
    ("Loading weights"): minutes for a 7B on a CPU. That loop reports through :mod:`vcot.progress` instead: the bar
    in console mode, ``load_weights_progress`` lines with ``eta_s`` in a pod's JSON log. A transformers that loads
    another way keeps its own bar."""
    from transformers import core_model_loading

    original = getattr(core_model_loading, "tqdm", None)
    if original is None:
        yield
        return

    def reported(iterable: Any, *args: Any, **kwargs: Any) -> Any:
        return track(iterable, "load_weights_progress", unit="tensor", model=model_uri)

    core_model_loading.tqdm = reported
    try:
        yield
    finally:
        core_model_loading.tqdm = original


VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def vision_token_ids(tokenizer: Any) -> list[int]:
    """The ids of the vision placeholders a sampled text must never hold: decoded and encoded again with the
    image, one would be taken for an image token ("image features and image tokens do not match")."""
    ids = [tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS]
    return sorted({i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id})


def image_token_types(input_ids: Any, tokenizer: Any) -> Any:
    """``mm_token_type_ids`` for hand-built batches: 1 at image tokens, 0 elsewhere. Without it Qwen-VL models
    (transformers 5) lay the image out on 1-D text positions instead of its 3-D grid, silently: every log-probability
    and every generated token then comes from a model that cannot see where things are."""
    from vcot.grounding.model_format import IMAGE_PAD

    return (input_ids == tokenizer.convert_tokens_to_ids(IMAGE_PAD)).long()


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end a response: the generation config's end-of-turn ids, the tokenizer's eos and pad."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    ids.update(i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None)
    return ids


@dataclass(frozen=True)
class Precision:
    """The compute dtype for this machine and whether we are on a GPU."""

    device: str
    dtype: Any


def machine_precision() -> Precision:
    """bf16 on GPUs that support it, else fp16; fp32 on CPU (bf16 there is 5x slower, NOTES)."""
    import torch

    if torch.cuda.is_available():
        return Precision("cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return Precision("cpu", torch.float32)


def _quantization_config(quantize: Quantize | None, dtype: Any) -> Any:
    if quantize is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ConfigError(f"quantize={quantize!r} is not supported: use 4bit, 8bit or leave it unset")


def _use_unsloth(precision: Precision) -> bool:
    return precision.device == "cuda" and importlib.util.find_spec("unsloth") is not None


def freeze_for_kbit_training(model: Any) -> None:
    """Freeze a quantized base for adapter training, its unquantized weights (embeddings, ``lm_head``, norms) kept in
    their dtype. PEFT's ``prepare_model_for_kbit_training`` also upcasts them to fp32: on a GPU that cost a
    Qwen2.5-VL-7B 2 GiB of frozen weights and more activations (fp32 norm outputs and logits; measured on an H200,
    docs/benchmarks.md), for no gain in bf16 while they are frozen. Only fp16, whose range is narrow, keeps the upcast.
    A recipe's ``modules_to_save`` copies are made from these weights; the train stage keeps them in fp32
    (:func:`vcot.train.common.upcast_trainable`).
    """
    import torch

    for param in model.parameters():
        param.requires_grad = False
        if param.dtype == torch.float16 and param.__class__.__name__ != "Params4bit":
            param.data = param.data.to(torch.float32)


def load_model_and_processor(
    model_uri: str,
    *,
    adapter_uri: str | None = None,
    quantize: Quantize | None = None,
    for_training: bool = False,
    sharded: bool = False,
) -> tuple[Any, Any]:
    """Load the base model (quantized when asked), apply ``adapter_uri`` if given, and load the processor.

    The processor comes from the adapter folder when it holds one (it records the pixel budget the adapter
    was trained with), else from the base model. With ``for_training`` the adapter stays trainable and a
    quantized base is prepared for k-bit training. ``sharded`` (a run that FSDP2 will shard): the model stays in
    CPU memory, and only rank 0 reads the weights; the other ranks get theirs from it (:func:`empty_model`).
    """
    precision = machine_precision()
    receives = sharded and _rank() > 0  # its weights come from rank 0: fetch no weight file
    unsloth = _use_unsloth(precision) and not sharded  # Unsloth loads whole models only
    base_path = local_model_path(model_uri, weights=not receives)
    adapter_path = local_model_path(adapter_uri) if adapter_uri else None
    shards = weight_files(base_path)
    log.info(
        "load_model",
        weights="rank 0's, at sharding" if receives else "read",
        model=model_uri,
        adapter=adapter_uri,
        quantize=quantize,
        device=precision.device,
        dtype=str(precision.dtype),
        unsloth=unsloth,
        weight_files=len(shards),
        weights_gib=round(sum(p.stat().st_size for p in shards) / 2**30, 3),
    )

    quantization_config = _quantization_config(quantize, precision.dtype)
    with load_errors(model_uri):
        if unsloth:
            from unsloth import FastVisionModel

            model, _ = FastVisionModel.from_pretrained(
                base_path,
                load_in_4bit=quantize == "4bit",
                load_in_8bit=quantize == "8bit",
                dtype=precision.dtype,
                use_gradient_checkpointing="unsloth" if for_training else False,
            )
        elif receives:
            model = empty_model(base_path, precision.dtype)
        else:
            from transformers import AutoModelForImageTextToText

            with weights_progress(model_uri):
                model = AutoModelForImageTextToText.from_pretrained(
                    base_path,
                    dtype=precision.dtype,
                    quantization_config=quantization_config,
                    # This process's GPU: torchrun's LOCAL_RANK (0 without torchrun); every rank holds a whole copy.
                    # Sharded: CPU memory; FSDP2 moves each rank's shards to its GPU (a 72B fits no one GPU).
                    device_map={"": int(os.environ.get("LOCAL_RANK", "0"))}
                    if precision.device == "cuda" and not sharded
                    else None,
                )
    if precision.device == "cpu":  # a 4-bit base of ours, or a checkpoint saved in 4 bits
        one_cpu_4bit_kernel(model)
    if quantize is not None:
        log.info("quantized", **quantized_layers(model))
    if for_training:
        model.config.use_cache = False
        if quantize is not None:
            freeze_for_kbit_training(model)
    if adapter_path is not None:
        from peft import PeftModel

        with load_errors(str(adapter_uri), what="adapter"), _adapter_fits(str(adapter_uri), model_uri):
            model = PeftModel.from_pretrained(model, adapter_path, is_trainable=for_training)
        log.info("adapter_loaded", adapter=adapter_uri, lora_parameters=lora_parameters(model))
    if not for_training:
        model.eval()

    has_processor = adapter_path is not None and (Path(adapter_path) / "processor_config.json").exists()
    with load_errors(str(adapter_uri) if has_processor else model_uri, what="adapter" if has_processor else "model"):
        processor = load_processor(adapter_path if has_processor else base_path)
    return model, processor


def quantized_layers(model: Any) -> dict[str, Any]:
    """What quantization made of ``model``: how many linear layers bitsandbytes holds in 4 or 8 bits, and whether
    every 4-bit one has its scales quantized too (double quantization). Logged after loading, so a run says what it
    quantized: every linear layer but the output one, as ``vcot-plan`` counts them."""
    four = [module.weight for module in model.modules() if type(module).__name__ == "Linear4bit"]
    return {
        "layers_4bit": len(four),
        "layers_8bit": sum(type(module).__name__ == "Linear8bitLt" for module in model.modules()),
        "quant_types": sorted({weight.quant_type for weight in four}),
        "double_quant": bool(four) and all(getattr(weight.quant_state, "nested", False) for weight in four),
    }


def lora_parameters(model: Any) -> int:
    """The LoRA parameters of ``model``'s adapters (what a loaded adapter added)."""
    return sum(parameter.numel() for name, parameter in model.named_parameters() if "lora_" in name)


def one_cpu_4bit_kernel(model: Any) -> int:
    """Make every NF4 layer of ``model`` compute on a CPU the way it trains, and return how many were switched.

    bitsandbytes 0.50 repacks a 4-bit layer's weights for an AVX512-BF16 kernel the first time it runs without
    gradients on a CPU that has the instructions (AMD EPYC, recent Xeons), and the repacking fails unless the
    layer's input width is a multiple of 64 and its output width of 32: Qwen2.5-VL's vision MLP (3,420 wide) and
    the tiny model's layers crash evaluation there. Switched off, every CPU runs one kernel, and a model answers
    the same on every machine."""
    switched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def empty_model(path: str, dtype: Any) -> Any:
    """The model of ``path``'s configuration with weights allocated but never written, so no page of them is in
    memory: a sharded run's ranks other than 0, which receive their shards from rank 0 when the Trainer shards the
    model (accelerate's ``cpu_ram_efficient_loading``), instead of each reading a 72B's 147 GB into host memory.
    Buffers computed at construction (the rotary frequencies) are real. Seen: an 8.3B (Qwen2.5-VL-7B) in 1.7 s
    and 0.1 GiB."""
    from transformers import AutoModelForImageTextToText
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
    model.tie_weights()  # as loading does (skipped without weight init): a tied output layer is not a parameter
    return model


# --------------------------------------------------------------------------------------------------
# Saving for serving
# --------------------------------------------------------------------------------------------------


SERVING_DTYPES = ("bfloat16", "float16")
PREPROCESSOR_CONFIG = "preprocessor_config.json"
VIDEO_PREPROCESSOR_CONFIG = "video_preprocessor_config.json"
VIDEO_PROCESSOR_TYPES = {"Qwen2_5_VLProcessor": "Qwen2VLVideoProcessor", "Qwen3VLProcessor": "Qwen3VLVideoProcessor"}
"""The video processor each family's processor loads with it (transformers 5.23 refuses a folder without one)."""


def save_processor_for_serving(processor: Any, dest: Path) -> None:
    """Save ``processor`` in the layout plain transformers and vLLM read: the family's own processor class.

    Our image-only subclass is unknown outside vcot, so every saved config names the class it derives from
    (``Qwen2_5_VLProcessor``, ``Qwen3VLProcessor``); the image processor is also written as the legacy
    ``preprocessor_config.json`` with ``min_pixels``/``max_pixels`` (what older transformers, and the video
    processor, read). An image-only processor (saved where torchvision is absent) gets the family's video
    processor config beside it, its patch sizes and the rest the class's defaults: vLLM loads the whole processor,
    and transformers 5.23 refuses a folder without one. vcot's :func:`load_processor` still loads the folder on a
    machine without torchvision.
    """
    processor.save_pretrained(dest)
    official = official_processor_class(processor)
    save_video_processor_config(processor, dest)
    size = processor.image_processor.size
    legacy = {
        **processor.image_processor.to_dict(),
        "min_pixels": int(size["shortest_edge"]),
        "max_pixels": int(size["longest_edge"]),
    }
    _write_json(dest / PREPROCESSOR_CONFIG, legacy)
    for name in ("processor_config.json", "tokenizer_config.json", PREPROCESSOR_CONFIG):
        path = dest / name
        if path.exists():
            _write_json(path, {**json.loads(path.read_text(encoding="utf-8")), "processor_class": official})


def official_processor_class(processor: Any) -> str:
    """The transformers class ``processor`` is or derives from (``Qwen2_5_VLProcessor`` for our image-only one)."""
    return next(cls.__name__ for cls in type(processor).__mro__ if cls.__module__.startswith("transformers."))


def save_video_processor_config(processor: Any, dest: Path) -> None:
    """Beside an image-only processor, the family's video processor config: its type and the image processor's
    patch sizes (the class's defaults fill the rest). Nothing for a processor that has its video processor."""
    official = official_processor_class(processor)
    if getattr(processor, "video_processor", None) is not None or official not in VIDEO_PROCESSOR_TYPES:
        return
    image = processor.image_processor
    sizes = {name: getattr(image, name) for name in ("patch_size", "temporal_patch_size", "merge_size")}
    _write_json(dest / VIDEO_PREPROCESSOR_CONFIG, {"video_processor_type": VIDEO_PROCESSOR_TYPES[official], **sizes})


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def without_plain_penalty(model: Any) -> None:
    """A model to be served without the base's plain repetition penalty in its ``generation_config.json``: servers
    take it as every request's default (vLLM does; Qwen's own sets 1.05), and a plain penalty pushes coordinate
    digits off the right numbers. vcot decodes with the box-aware penalty in process and asks servers for none."""
    config = getattr(model, "generation_config", None)
    if config is not None and config.repetition_penalty not in (None, 1.0):
        log.info("plain_repetition_penalty_left_out", base=config.repetition_penalty, saved=1.0)
        config.repetition_penalty = 1.0


def save_merged(model_uri: str, adapter_uri: str, dest: Path, *, dtype: str | None = "bfloat16") -> Any:
    """The base (never a quantized one) with the adapter merged in, saved with its processor for serving
    (:func:`save_processor_for_serving`); returns the processor. Merged at the machine's precision, then cast to
    ``dtype`` (``None``: kept at that precision)."""
    import torch

    if dtype is not None and dtype not in SERVING_DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(SERVING_DTYPES)}")
    model, processor = load_model_and_processor(model_uri, adapter_uri=adapter_uri)
    merged = model.merge_and_unload()
    if dtype is not None:
        merged = merged.to(getattr(torch, dtype))
    without_plain_penalty(merged)
    merged.save_pretrained(dest)
    save_processor_for_serving(processor, dest)
    return processor
