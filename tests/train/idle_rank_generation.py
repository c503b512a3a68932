"""``torchrun ... -m tests.train.idle_rank_generation MODEL FOLDER``: the tiny model sharded with FSDP2 over the
ranks, each answering its own record with :func:`vcot.models.generation.generate_batch`, as a sharded run's
held-out evaluation does; the last rank's image cannot be read (a storage error on one node). Prints one JSON line
per rank: what it answered. Without a rank with nothing to answer stepping with the others, they would wait for
its shards until the process group's timeout (``VCOT_COLLECTIVE_TIMEOUT_MINUTES``, set short by the test)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from torch.distributed.fsdp import fully_shard

from vcot.grounding.model_format import ModelFormat
from vcot.models.generation import GenerationSettings, Skipped, generate_batch
from vcot.models.loading import load_model_and_processor, model_family
from vcot.train import distributed


def main(model_dir: str, folder: str) -> None:
    distributed.init()
    rank, last = distributed.rank(), distributed.world_size() - 1
    image = Path(folder) / f"rank{rank}.png"
    if rank != last:
        Image.new("RGB", (64, 64), "red").save(image)
    record = {"id": f"r{rank}", "image": str(image), "width": 64, "height": 64, "question": "What color is it?",
              "answer": "red", "objects": []}  # fmt: skip
    model, processor = load_model_and_processor(model_dir)
    for module in list(model.modules()):  # as the Trainer shards: each decoder layer and vision block, then the rest
        if type(module).__name__ in model._no_split_modules:
            fully_shard(module)
    fully_shard(model)
    with torch.no_grad():  # a forward pass through the whole model first, as the Trainer's eval_loss pass makes
        model(**processor.tokenizer(["Hello"], return_tensors="pt"))
    fmt = ModelFormat.for_processor(processor, model_family(model_dir), coords="norm1000")
    (answer,) = generate_batch(model.eval(), processor, [record], GenerationSettings(fmt=fmt, max_new_tokens=6))
    print(json.dumps({"rank": rank, "skipped": isinstance(answer, Skipped), "answer": str(answer)}), flush=True)
    distributed.barrier()
    distributed.leave()  # a process that exits in a gloo group can abort at shutdown


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
