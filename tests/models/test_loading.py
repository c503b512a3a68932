"""Loading a base model (+ adapter) and its processor from a folder, S3, or a hub id."""

from __future__ import annotations

import http.server
import math
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from structlog.testing import capture_logs

from tests.conftest import built_vllm_venv
from vcot.errors import VcotError
from vcot.io import manifest, storage
from vcot.models import loading
from vcot.models.loading import (
    ImageOnlyQwen3VLProcessor,
    ImageOnlyQwen25VLProcessor,
    Precision,
    load_model_and_processor,
    load_processor,
    load_processor_for,
    local_model_path,
    official_chat_template,
    save_processor_for_serving,
)
from vcot.train.distributed import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_loads_a_local_folder_in_fp32_for_inference(tiny_model_dir: Path) -> None:
    model, processor = load_model_and_processor(str(tiny_model_dir))
    assert isinstance(processor, ImageOnlyQwen25VLProcessor)
    assert model.dtype == torch.float32 and not model.training


def test_s3_prefix_is_synced_to_the_cache(
    tiny_model_dir: Path, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VCOT_MODEL_CACHE", str(tmp_path / "cache"))
    uri = f"{s3_bucket}/models/tiny"
    storage.upload_dir(tiny_model_dir, uri)
    processor = load_processor_for(uri)  # tokenize fetches no weights
    assert isinstance(processor, ImageOnlyQwen25VLProcessor)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))
    path = Path(local_model_path(uri))
    assert path.parent == tmp_path / "cache"
    assert (path / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
    model, _ = load_model_and_processor(uri)
    assert model.config.model_type == "qwen2_5_vl"


def test_missing_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(VcotError, match="does not exist"):
        local_model_path(str(tmp_path / "nope"))


# --------------------------------------------------------------------------------------------------
# Hub ids: passed through when the hub answers, else the local hub cache, else one line at once
# --------------------------------------------------------------------------------------------------

HUB_ID = "Qwen/Qwen2.5-VL-7B-Instruct"


@pytest.fixture
def hub_down(monkeypatch: pytest.MonkeyPatch) -> str:
    """A hub endpoint nothing listens on: a machine without network, whatever network this one has."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", endpoint)
    return endpoint


@pytest.fixture
def hub_up(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A local server standing in for the hub's front door (it answers 404 to anything); yields the paths asked."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
            asked.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield asked
    server.shutdown()


def _hub_cache_with(model: Path, repo_id: str, cache: Path) -> Path:
    """``model`` laid out as huggingface_hub caches ``repo_id``'s main revision in ``cache``; returns the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return Path(shutil.copytree(model, repo / "snapshots" / revision))


def test_a_hub_id_passes_through_when_the_hub_answers(hub_up: list[str]) -> None:
    assert local_model_path(HUB_ID) == HUB_ID
    assert hub_up == ["/"]  # one request, to the front door


def test_an_unreachable_hub_fails_at_once_with_what_to_pass(hub_down: str) -> None:
    with pytest.raises(VcotError) as raised:
        load_processor_for(HUB_ID)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"cannot load model {HUB_ID}: no such folder here, and the hub cannot be reached ")
    assert f"({hub_down} does not answer; no copy in the local hub cache)" in message
    assert f"hf download {HUB_ID} --local-dir DIR" in message and "an s3:// copy" in message


def test_an_unreachable_hub_uses_the_local_hub_cache(
    hub_down: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = _hub_cache_with(tiny_model_dir, "my-org/tiny", tmp_path / "hub")
    assert local_model_path("my-org/tiny") == str(snapshot)
    assert isinstance(load_processor_for("my-org/tiny"), ImageOnlyQwen25VLProcessor)


def test_hf_hub_offline_asks_the_hub_nothing(hub_up: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(VcotError, match=r"cannot be reached \(HF_HUB_OFFLINE is set; no copy in the local hub cache\)"):
        local_model_path(HUB_ID)
    assert hub_up == []


def test_a_stage_given_an_unreachable_hub_id_says_so_in_one_line(tmp_path: Path) -> None:
    """``vcot-tokenize --model <hub id>`` in its own process with no hub (HF_ENDPOINT on a closed port): exit 1 and
    the one line, without huggingface_hub's retries (about 3 minutes before)."""
    records = str(tmp_path / "records")
    manifest.commit(records, stage="convert", files=[], config={})
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "VCOT_LOG_FORMAT": "json",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("HF_HUB_OFFLINE", None)
    command = [sys.executable, "-m", "jobs.tokenize", "--input", records, "--output", str(tmp_path / "tokens"),
               "--model", HUB_ID]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 1
    line = _error_line(result.stderr, "tokenize")
    assert f"cannot load model {HUB_ID}: no such folder here, and the hub cannot be reached" in line
    assert "Retrying" not in result.stderr


def test_adapter_is_applied_and_its_processor_preferred(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, processor = load_model_and_processor(str(tiny_model_dir))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 84 * 84}
    processor.save_pretrained(adapter)

    with capture_logs() as logs:
        loaded, loaded_processor = load_model_and_processor(str(tiny_model_dir), adapter_uri=str(adapter))
    assert type(loaded).__name__ == "PeftModel" and not loaded.training
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as weights:
        saved = sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    assert [entry["lora_parameters"] for entry in logs if entry["event"] == "adapter_loaded"] == [saved]  # every one
    assert loaded_processor.image_processor.size.longest_edge == 84 * 84
    lora = [p for n, p in loaded.named_parameters() if "lora_B" in n]
    assert lora and not any(p.requires_grad for p in lora)
    trainable, _ = load_model_and_processor(str(tiny_model_dir), adapter_uri=str(adapter), for_training=True)
    assert all(p.requires_grad for n, p in trainable.named_parameters() if "lora_" in n)


def test_4bit_quantization_runs_on_cpu(tiny_model_dir: Path) -> None:
    """Also as evaluation runs it (no gradients), where bitsandbytes would repack the tiny widths for its
    AVX512-BF16 kernel on CPUs that have one, and crash (``one_cpu_4bit_kernel``)."""
    import bitsandbytes as bnb

    with capture_logs() as logs:
        model, _ = load_model_and_processor(str(tiny_model_dir), quantize="4bit")
    assert getattr(model, "is_loaded_in_4bit", False)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(layer.support_avx512bf16_for_cpu for layer in layers)
    linear = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    quantized = next(entry for entry in logs if entry["event"] == "quantized")  # what the run says it quantized
    assert quantized == {"event": "quantized", "log_level": "info", "layers_4bit": len(linear), "layers_8bit": 0,
                         "quant_types": ["nf4"], "double_quant": True}
    ids = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_a_4bit_base_for_training_keeps_its_16_bit_weights_in_their_dtype(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a bf16 GPU a QLoRA base keeps its embeddings, ``lm_head`` and norms in bf16, frozen. PEFT's
    ``prepare_model_for_kbit_training`` upcast them to fp32: 2 GiB more weights on a Qwen2.5-VL-7B and, through
    fp32 norm outputs and logits, 2.6 GiB more activations at batch 4 (4.6 GiB in all; measured on an H200,
    docs/benchmarks.md). The CPU path's precision is swapped for the GPU's to run it here."""
    import bitsandbytes as bnb

    monkeypatch.setattr(loading, "machine_precision", lambda: Precision("cpu", torch.bfloat16))
    model, _ = load_model_and_processor(str(tiny_model_dir), quantize="4bit", for_training=True)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    unquantized = {name: p.dtype for name, p in model.named_parameters() if not isinstance(p, bnb.nn.Params4bit)}
    assert "lm_head.weight" in unquantized and any("norm" in name for name in unquantized)
    assert set(unquantized.values()) == {torch.bfloat16}, unquantized
    assert not any(p.requires_grad for p in model.parameters())


def test_fp16_weights_of_a_quantized_base_are_upcast_for_training() -> None:
    """fp16's narrow range is why PEFT upcasts: on a GPU without bf16 the frozen 16-bit weights go to fp32."""
    module = torch.nn.Sequential(torch.nn.Embedding(4, 2), torch.nn.LayerNorm(2)).half()
    loading.freeze_for_kbit_training(module)
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in module.parameters())


def _stock_copy(folder: Path, dest: Path, *, keep_template: bool = True) -> Path:
    """``folder`` as a released checkpoint names its processor: the stock class, which needs the video processor."""
    import shutil

    shutil.copytree(folder, dest)
    config = dest / "processor_config.json"
    config.write_text(config.read_text().replace('"ImageOnlyQwen', '"Qwen'))
    if not keep_template:
        (dest / "chat_template.jinja").unlink()
    return dest


def test_a_stock_qwen_processor_folder_falls_back_to_the_image_only_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    processor = load_processor(str(_stock_copy(tiny_model_dir, tmp_path / "stock")))
    assert isinstance(processor, ImageOnlyQwen25VLProcessor)
    reference = load_processor(str(tiny_model_dir))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}]
    assert processor.apply_chat_template(messages, tokenize=False) == reference.apply_chat_template(
        messages, tokenize=False
    )


def test_loads_a_tiny_qwen3vl_folder_by_its_saved_config(tiny_qwen3vl_dir: Path) -> None:
    model, processor = load_model_and_processor(str(tiny_qwen3vl_dir))
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration" and not model.training
    assert isinstance(processor, ImageOnlyQwen3VLProcessor) and processor.image_processor.patch_size == 16


def test_a_stock_qwen3vl_folder_falls_back_to_its_image_only_processor_and_official_template(
    tiny_qwen3vl_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "vcot.dev.tiny_model", None)  # the fallback needs no development tool
    folder = _stock_copy(tiny_qwen3vl_dir, tmp_path / "stock", keep_template=False)
    processor = load_processor(str(folder))
    assert isinstance(processor, ImageOnlyQwen3VLProcessor)
    assert processor.image_processor.patch_size == 16
    assert processor.chat_template == official_chat_template("qwen3_vl")
    assert processor.chat_template == load_processor(str(tiny_qwen3vl_dir)).chat_template


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_a_folder_saved_for_serving_names_its_video_processor(
    family: str, tiny_model_dir: Path, tiny_qwen3vl_dir: Path, tmp_path: Path
) -> None:
    """Saved where torchvision is absent, the folder still names the family's video processor, which transformers
    5.23 (and so vLLM's processor loading) requires; vcot loads it back as before. Where transformers and torchvision
    are both there (vLLM's venv), the whole processor loads with those patch sizes."""
    import json

    base = tiny_model_dir if family == "qwen2.5-vl" else tiny_qwen3vl_dir
    folder = tmp_path / "served"
    shutil.copytree(base, folder)
    image_only = load_processor(str(base))
    save_processor_for_serving(image_only, folder)
    video = json.loads((folder / "video_preprocessor_config.json").read_text())
    expected = {"qwen2.5-vl": "Qwen2VLVideoProcessor", "qwen3-vl": "Qwen3VLVideoProcessor"}[family]
    assert video["video_processor_type"] == expected
    assert video["patch_size"] == image_only.image_processor.patch_size == {"qwen2.5-vl": 14, "qwen3-vl": 16}[family]
    assert type(load_processor(str(folder))) is type(image_only)
    venv = built_vllm_venv()
    probe = (
        "import sys; from transformers import AutoProcessor; p = AutoProcessor.from_pretrained(sys.argv[1]); "
        "v = p.video_processor; print(type(v).__name__, v.patch_size, v.temporal_patch_size, v.merge_size)"
    )
    command = [str(venv / "bin" / "python"), "-c", probe, str(folder)]
    loaded = subprocess.run(command, capture_output=True, text=True, check=False)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    sizes = [video[name] for name in ("patch_size", "temporal_patch_size", "merge_size")]
    assert loaded.stdout.split()[-4:] == [expected, *map(str, sizes)]


def test_the_fallback_refuses_a_model_type_it_has_no_processor_for(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json

    folder = _stock_copy(tiny_model_dir, tmp_path / "stock")
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(VcotError, match="holds a llava model.*qwen2_5_vl, qwen3_vl"):
        load_processor(str(folder))


# --------------------------------------------------------------------------------------------------
# A wrong --model is a one-line error through the entrypoints, not a traceback
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub: what a pod without network sees, at once instead of after the hub client's retries."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


def _error_line(err: str, stage: str) -> str:
    """The one line besides the JSON log events: no traceback."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith(f"vcot-{stage}: error: "), err
    return lines[0]


def _tokenize_with(model: str, root: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from jobs.tokenize import main

    records = storage.join(root, "records")
    manifest.commit(records, stage="convert", files=[], config={})
    code = main(["--input", records, "--output", storage.join(root, "tokens"), "--model", model])
    return code, _error_line(capsys.readouterr().err, "tokenize")


def test_tokenize_refuses_a_relative_model_folder_that_does_not_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # models/qwen does not exist here, so it is taken for a hub id
    code, line = _tokenize_with("models/qwen", str(tmp_path), capsys)
    assert code == 1
    assert "cannot load model models/qwen: " in line and "holding config.json and the tokenizer" in line


def test_tokenize_refuses_s3_prefixes_without_a_model(s3_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, line = _tokenize_with(f"{s3_bucket}/models/empty", f"{s3_bucket}/a", capsys)
    assert code == 1 and f"no model files under {s3_bucket}/models/empty" in line
    storage.write_json(f"{s3_bucket}/models/config-only/config.json", {"model_type": "qwen2_5_vl"})
    code, line = _tokenize_with(f"{s3_bucket}/models/config-only", f"{s3_bucket}/b", capsys)
    assert code == 1 and f"cannot load model {s3_bucket}/models/config-only: " in line


def test_train_refuses_a_model_it_cannot_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.train import main

    monkeypatch.chdir(tmp_path)
    tokens = str(tmp_path / "tokens")
    settings = {"mode": "text", "coords": "norm1000", "min_pixels": 3136, "max_pixels": 12544, "model": "models/qwen"}
    manifest.commit(tokens, stage="tokenize", files=[], config=settings)
    output = str(tmp_path / "runs" / "r")
    code = main(["--data", tokens, "--model", "models/qwen", "--output", output, "--recipe", "tiny-cpu"])
    assert code == 1
    assert "cannot load model models/qwen: " in _error_line(capsys.readouterr().err, "train")


def test_a_missing_adapter_is_named_as_such(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(VcotError, match="cannot load adapter .*adapter/ folder"):
        load_model_and_processor(str(tiny_model_dir), adapter_uri=str(tiny_model_dir))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_an_empty_model_has_the_parameters_of_the_loaded_one(
    tiny_model_dir: Path, tmp_path: Path, tied: bool
) -> None:
    """What a sharded run's other ranks build instead of loading (rank 0's weights are sent into it): the same
    parameter names and shapes, a tied output layer tied (Qwen2.5-VL-3B's: untied, FSDP2 wrapping fails), and the
    rotary frequencies computed, not left unwritten."""
    import json

    from transformers import AutoModelForImageTextToText

    from vcot.models.loading import empty_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    if tied:  # saved as transformers saves a tied model: the output layer is the embedding, stored once
        config = json.loads((folder / "config.json").read_text())
        config["tie_word_embeddings"] = config["text_config"]["tie_word_embeddings"] = True
        (folder / "config.json").write_text(json.dumps(config))
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
        model.tie_weights()
        model.save_pretrained(folder)
    loaded = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    assert (loaded.lm_head.weight is loaded.get_input_embeddings().weight) is tied
    empty = empty_model(str(folder), torch.float32)

    def layout(tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, tuple[torch.Size, torch.dtype]]:
        return {name: (tensor.shape, tensor.dtype) for name, tensor in tensors}

    assert layout(empty.named_parameters()) == layout(loaded.named_parameters())
    assert layout(empty.named_buffers()) == layout(loaded.named_buffers())
    assert (empty.lm_head.weight is empty.get_input_embeddings().weight) is tied
    frequencies = dict(loaded.named_buffers())
    for name, buffer in empty.named_buffers():
        assert torch.equal(buffer, frequencies[name]), name
