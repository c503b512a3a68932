"""The demo's test model: the tiny Qwen2.5-VL with a LoRA adapter taught one grounded answer to one question.

A random tiny model may never close a box, so the adapter is trained (a few seconds, on CPU) until greedy
decoding of the example's question writes :data:`RATIONALE`. The boxes the page draws then come from the
model's own streamed text, read through its format, with nothing faked. The adapter answers in Qwen2.5-VL's
absolute pixels of the resized image (``qwen2.5-absolute``), so the page must convert them to be right.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig

from vcot.demo.examples import EXAMPLES, draw
from vcot.grounding.model_format import ModelFormat
from vcot.grounding.prompts import build_messages
from vcot.models.loading import MODEL_CARD, architecture, load_model_and_processor

EXAMPLE = EXAMPLES[0]  # a red circle and a blue square, "What color is the circle?"
HOUSE_BOX = (125, 250, 458, 750)
"""The circle's box in house coordinates: what the page must draw, whatever frame the model writes in."""
RATIONALE = f"The <ref>circle</ref><box>[{', '.join(map(str, HOUSE_BOX))}]</box> is red. Answer: red"
TARGET_LOSS = 0.01


@dataclass(frozen=True)
class TrainedAdapter:
    path: Path
    image: Path
    fmt: ModelFormat
    response: str
    """What greedy decoding writes: RATIONALE in the adapter's frame."""


@pytest.fixture(scope="session")
def trained_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedAdapter:
    folder = tmp_path_factory.mktemp("demo-adapter")
    image_path = folder / "circle.png"
    image = draw(EXAMPLE)
    image.save(image_path)
    torch.manual_seed(0)
    model, processor = load_model_and_processor(str(tiny_model_dir))
    fmt = ModelFormat.for_processor(processor, "qwen2.5-vl", coords="qwen2.5-absolute")
    record = {"image": str(image_path), "question": EXAMPLE.question, "rationale": RATIONALE,
              "width": image.width, "height": image.height}
    prompt = processor.apply_chat_template(build_messages(record, fmt, with_answer=False), tokenize=False,
                                           add_generation_prompt=True)
    full = processor.apply_chat_template(build_messages(record, fmt), tokenize=False)
    assert full.startswith(prompt)
    inputs = processor(text=[full], images=[image], return_tensors="pt")
    prompt_length = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"].shape[1]
    labels = inputs["input_ids"].clone()
    labels[:, :prompt_length] = -100
    # lm_head trained in full: LoRA alone leaves the frozen head's logits nearly flat (a fragile argmax).
    peft_model = get_peft_model(model, LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, modules_to_save=["lm_head"],
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~2 s for this tiny model; 20x more on a busy 2-core machine with two threads
    try:
        for _ in range(400):
            loss = peft_model(**inputs, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if loss.item() < TARGET_LOSS:
                break
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < TARGET_LOSS, f"the test adapter did not learn its answer (loss {loss.item():.3f})"
    adapter = folder / "adapter"
    peft_model.save_pretrained(adapter)
    base_architecture = architecture(AutoConfig.from_pretrained(tiny_model_dir).to_dict())
    card = {"base_model": str(tiny_model_dir), "base_architecture": base_architecture, "model_format": fmt.to_dict()}
    (adapter / MODEL_CARD).write_text(json.dumps(card), encoding="utf-8")
    response = fmt.render(RATIONALE, image.width, image.height)
    return TrainedAdapter(path=adapter, image=image_path, fmt=fmt, response=response)
