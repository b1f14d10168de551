"""Examples → token ids and labels; dynamic-padding collate; a resumable batch sampler.

Labels follow ORIGINAL_M2UGEN.md §2: prompt positions are ignored (-100); the response
and EOS are supervised. A music response ends with the [AUD] tokens; their positions are
recorded so the trainer can take the hidden states that predict them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from m2ugen.conversation import Turn, format_prompt
from m2ugen.data.example import Example

IGNORE = -100


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    audio_positions: list[int] | None  # positions of [AUD0..7] in input_ids
    truncated: bool


def tokenize_example(ex: Example, tokenizer, template: str, audio_token_ids: list[int],
                     max_len: int) -> Tokenized:
    """Prompt (history + instruction) and response ids; the sequence is capped at max_len.

    When the cap cuts into a music response's [AUD] tokens the example keeps its text loss
    but loses the music target (`audio_positions` None, `truncated` True).
    """
    prompt = format_prompt(template, [Turn(u, a) for u, a in ex.history], ex.instruction)
    prompt_ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False).input_ids]
    response_ids = tokenizer(ex.response, add_special_tokens=False).input_ids if ex.response \
        else []
    if ex.music_caption is not None:
        response_ids = [*response_ids, *audio_token_ids]
    response_ids.append(tokenizer.eos_token_id)
    ids = prompt_ids + response_ids
    labels = [IGNORE] * len(prompt_ids) + response_ids
    truncated = len(ids) > max_len
    ids, labels = ids[:max_len], labels[:max_len]
    positions = None
    if ex.music_caption is not None:
        start = len(prompt_ids) + len(response_ids) - 1 - len(audio_token_ids)
        if start + len(audio_token_ids) <= len(ids):
            positions = list(range(start, start + len(audio_token_ids)))
    return Tokenized(ids, labels, positions, truncated)


def collate(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Pad token fields to the longest item (right padding); keep the rest as lists."""
    longest = max(len(it["input_ids"]) for it in items)
    b = len(items)
    ids = torch.full((b, longest), pad_id, dtype=torch.long)
    labels = torch.full((b, longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((b, longest), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        ids[i, :n] = torch.tensor(it["input_ids"])
        labels[i, :n] = torch.tensor(it["labels"])
        mask[i, :n] = 1
    out: dict[str, Any] = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    for key in items[0]:
        if key not in out:
            out[key] = [it[key] for it in items]
    return out


class ResumableBatchSampler:
    """Per-rank batches of indices, deterministic for (seed, epoch), resumable mid-epoch.

    Each global step takes `world × batch_size` consecutive examples of the epoch's order;
    rank r gets its slice. With `group_by_length`, examples are sorted by length inside
    windows of 50 global batches (then the batches are shuffled), which cuts padding.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, world: int = 1, rank: int = 0,
                 seed: int = 0, group_by_length: bool = False) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.world = world
        self.rank = rank
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0
        self.start_batch = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def __len__(self) -> int:
        return max(1, len(self.lengths) // self.global_batch)

    def _order(self) -> list[int]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        if self.group_by_length:
            window = self.global_batch * 50
            chunks = [sorted(order[i:i + window], key=lambda j: -self.lengths[j])
                      for i in range(0, len(order), window)]
            batches = [c[i:i + self.global_batch] for c in chunks
                       for i in range(0, len(c), self.global_batch)]
            rng.shuffle(batches)
            order = [j for batch in batches for j in batch]
        while len(order) < self.global_batch:  # tiny datasets: repeat to fill one batch
            order += order[: self.global_batch - len(order)]
        return order

    def set_position(self, epoch: int, batch: int) -> None:
        self.epoch, self.start_batch = epoch, batch

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order()
        for k in range(self.start_batch, len(self)):
            chunk = order[k * self.global_batch:(k + 1) * self.global_batch]
            yield chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        self.start_batch = 0
