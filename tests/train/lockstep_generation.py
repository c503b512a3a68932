"""``torchrun ... -m tests.train.lockstep_generation MODEL [--unsynced]``: the tiny model sharded with FSDP2 over
the ranks, each rank generating its own number of tokens (rank r: 3 + 5r, no early end), as RL rollouts and RGFN's
samples end at different lengths on different ranks. Prints one JSON line per rank: how many tokens it generated
and whether the sharded answer is the whole model's. ``fully_shard`` marks the modules it manages, and
transformers' ``generate`` then keeps a finished rank stepping with the others (``synced_gpus``); with
``--unsynced`` (``synced_gpus=False``) the ranks' gathers stop pairing up and the job fails."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForImageTextToText


def main(model_dir: str, synced: bool) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt = torch.tensor([[1 + rank, 7, 11, 13]])
    tokens = 3 + 5 * rank
    settings = {"do_sample": False, "max_new_tokens": tokens, "min_new_tokens": tokens, "pad_token_id": 0}
    with torch.no_grad():
        whole = model.generate(prompt, **settings)
        for layer in model.model.language_model.layers:
            fully_shard(layer)
        fully_shard(model)
        sharded = model.generate(prompt, **settings, **({} if synced else {"synced_gpus": False}))
    print(json.dumps({"rank": rank, "tokens": sharded.shape[1] - prompt.shape[1],
                      "same": torch.equal(whole, sharded)}), flush=True)  # fmt: skip
    dist.barrier()  # neither rank tears gloo down while the other still talks to it (a busy machine aborted rank 1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], "--unsynced" not in sys.argv[2:])
