"""Padding-free packing for SFT (recipe ``packing: N``): tokenized rows concatenated into rows of at most N tokens.

A packed row computes on no padding: each sample keeps its own multimodal rope positions (Qwen2.5-VL's and
Qwen3-VL's 3-D positions, computed for it alone as in an unpacked batch, then joined), its image (images in the
samples' order), its labels (the first token of each sample predicts nothing of its neighbour's), and its own
attention: no ``attention_mask`` is sent, and the text positions that restart at 0 at each sample make transformers
build the block-diagonal causal mask (sdpa and eager here; flash-attention's varlen path on a GPU). A sample is
never split across rows; one longer than N has a row of its own.

- :func:`pack_indices`: which rows go together (first-fit decreasing, pure);
- :class:`PackedDataset`: the packs of a :class:`~vcot.train.data.TokenizedDataset`;
- :class:`PackedCollator`: a batch of packs, one padded row each (the padding tail is a block of its own);
- :func:`use_packed_positions`: the hook on the model that turns a batch's ``pack_lengths`` into positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from vcot.grounding.model_format import IGNORE_INDEX
from vcot.train.data import Collator

PACK_LENGTHS = "pack_lengths"
"""The batch key holding each packed row's sample lengths (the padding tail last, zeros after)."""


def pack_indices(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Row indices grouped so that each group's lengths sum to at most ``capacity`` (a longer row alone), longest
    rows placed first, each into the first group with room; groups in order of their first row, rows in index order.

    >>> pack_indices([5, 3, 4, 2, 9], 8)
    [[0, 1], [2, 3], [4]]
    """
    groups: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = next((g for g, free in enumerate(room) if lengths[index] <= free), None)
        if slot is None:
            groups.append([index])
            room.append(capacity - lengths[index])
        else:
            groups[slot].append(index)
            room[slot] -= lengths[index]
    return sorted(sorted(group) for group in groups)


class PackedDataset(Dataset):
    """The packs of ``rows``: item ``i`` is the list of rows packed together."""

    def __init__(self, rows: Any, capacity: int) -> None:
        self.rows = rows
        self.packs = pack_indices(rows.lengths(), capacity)

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        return [self.rows[i] for i in self.packs[index]]

    def lengths(self) -> list[int]:
        """Tokens per pack (what ``group_by_length`` would sort by)."""
        row_lengths = self.rows.lengths()
        return [sum(row_lengths[i] for i in pack) for pack in self.packs]


class PackedCollator:
    """Packs (lists of rows) into a batch of packed rows; single rows (evaluation's) as :class:`Collator` does."""

    def __init__(self, processor: Any) -> None:
        self.collator = Collator(processor)

    def __call__(self, items: list[Any]) -> dict[str, torch.Tensor]:
        if not isinstance(items[0], list):
            return self.collator(items)
        width = max(sum(len(row["input_ids"]) for row in pack) for pack in items)
        input_ids = torch.full((len(items), width), self.collator.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        pack_lengths = torch.zeros((len(items), max(len(pack) for pack in items) + 1), dtype=torch.long)
        rows, spans = [], []
        for i, pack in enumerate(items):
            start = 0
            for k, row in enumerate(pack):
                end = start + len(row["input_ids"])
                input_ids[i, start:end] = torch.tensor(row["input_ids"])
                labels[i, start:end] = torch.tensor(row["labels"])
                labels[i, start] = IGNORE_INDEX  # no sample learns its first token from its neighbour's last
                pack_lengths[i, k] = end - start
                rows.append(row)
                spans.append((i, start, end))
                start = end
            pack_lengths[i, len(pack)] = width - start  # the padding tail: a block of its own, no labels
        batch = {"input_ids": input_ids, "labels": labels, PACK_LENGTHS: pack_lengths}
        return self.collator.with_images(batch, rows, spans)


def packed_positions(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """``position_ids`` of packed rows, ``(4, batch, length)``: the text positions restarting at each sample (what
    transformers reads the block-diagonal mask from), then each sample's 3-D rope positions as the model computes
    them for that sample alone."""
    input_ids, grids = batch["input_ids"], batch.get("image_grid_thw")
    types = batch.get("mm_token_type_ids")
    rows, next_image = [], 0
    for i in range(input_ids.shape[0]):
        parts, start = [], 0
        for length in batch[PACK_LENGTHS][i].tolist():
            if length == 0:
                continue
            ids = input_ids[i : i + 1, start : start + length]
            sample_types = types[i : i + 1, start : start + length] if types is not None else None
            images = int(sample_types.sum().item() > 0) if sample_types is not None else 0
            grid = grids[next_image : next_image + images] if images else None
            next_image += images
            rope, _ = model.get_rope_index(ids, image_grid_thw=grid, attention_mask=torch.ones_like(ids),
                                           mm_token_type_ids=sample_types)  # fmt: skip
            text = torch.arange(length, device=ids.device).view(1, 1, -1)
            parts.append(torch.cat([text, rope.to(ids.device)], dim=0))
            start += length
        rows.append(torch.cat(parts, dim=-1))
    return torch.cat(rows, dim=1)


def use_packed_positions(model: Any) -> None:
    """Let ``model`` (the transformers model, under any PEFT wrapper) take packed batches: a forward pre-hook turns a
    batch's ``pack_lengths`` into ``position_ids``, sends no attention mask and no cache (with either, transformers
    would not read the samples' boundaries from the positions). Batches without ``pack_lengths`` pass unchanged."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if PACK_LENGTHS not in kwargs:
            return args, kwargs
        kwargs["position_ids"] = packed_positions(inner.model, kwargs)
        kwargs.pop(PACK_LENGTHS)
        kwargs.update(attention_mask=None, use_cache=False)
        return args, kwargs

    inner.register_forward_pre_hook(hook, with_kwargs=True)
