"""Tokenising examples into labels, dynamic padding, and the resumable batch sampler."""

from __future__ import annotations

import pytest
import torch

from m2ugen.conversation import Turn, build_prompt_ids
from m2ugen.data.batching import IGNORE, ResumableBatchSampler, collate, tokenize_example
from m2ugen.data.example import Example


def _tok(model, ex: Example, max_len: int = 512):
    return tokenize_example(ex, model.tokenizer, model.config.prompt_template,
                            model.llm.audio_token_ids, max_len)


def test_prompt_is_ignored_and_response_plus_eos_supervised(tiny_model):
    tok = tiny_model.tokenizer
    ex = Example(instruction="What instruments play?", response="A piano and drums.",
                 history=[("Hi", "Hello there.")])
    out = _tok(tiny_model, ex)
    prompt, _ = build_prompt_ids(tok, tiny_model.config.prompt_template,
                                 [Turn("Hi", "Hello there.")], "What instruments play?", 10_000)
    n = len(prompt)
    assert out.input_ids[:n] == prompt  # the same prompt chat builds at inference
    assert out.labels[:n] == [IGNORE] * n
    response = tok("A piano and drums.", add_special_tokens=False).input_ids
    assert out.labels[n:] == [*response, tok.eos_token_id] == out.input_ids[n:]
    assert out.audio_positions is None and not out.truncated


def test_music_response_ends_with_the_audio_tokens(tiny_model):
    aud = tiny_model.llm.audio_token_ids
    out = _tok(tiny_model, Example(instruction="A calm piano piece.",
                                   response="A calm piano piece.",
                                   music_caption="A calm piano piece."))
    assert [out.input_ids[p] for p in out.audio_positions] == aud
    assert out.audio_positions == list(range(len(out.input_ids) - 9, len(out.input_ids) - 1))
    assert out.input_ids[-1] == tiny_model.tokenizer.eos_token_id
    # stage-1 captioning: empty instruction, nothing but the caption supervised
    cap = _tok(tiny_model, Example(instruction="", response="A calm piano piece."))
    assert cap.audio_positions is None and cap.labels[-1] == tiny_model.tokenizer.eos_token_id


def test_cap_that_cuts_the_audio_tokens_drops_the_music_target(tiny_model):
    ex = Example(instruction="x " * 10, response="y " * 10, music_caption="y")
    full = _tok(tiny_model, ex)
    cut = _tok(tiny_model, ex, max_len=len(full.input_ids) - 3)
    assert cut.truncated and cut.audio_positions is None
    assert len(cut.input_ids) == len(cut.labels) == len(full.input_ids) - 3


def test_collate_pads_right_and_masks():
    items = [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7], "caption": "a"},
             {"input_ids": [8], "labels": [8], "caption": None}]
    batch = collate(items, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["caption"] == ["a", None]


def test_sampler_ranks_partition_each_global_batch():
    lengths = list(range(40))
    one = list(ResumableBatchSampler(lengths, batch_size=4, world=1, seed=3))
    ranks = [list(ResumableBatchSampler(lengths, batch_size=2, world=2, rank=r, seed=3))
             for r in range(2)]
    assert len(one) == len(ranks[0]) == 10
    for k in range(10):  # rank 0 + rank 1 of step k == the single process's batch k
        assert ranks[0][k] + ranks[1][k] == one[k]
    assert sorted(i for b in one for i in b) == lengths


def test_sampler_resumes_mid_epoch_and_reshuffles_per_epoch():
    s = ResumableBatchSampler(list(range(30)), batch_size=3, seed=1)
    epoch0 = list(s)
    s.set_position(0, 4)
    assert list(s) == epoch0[4:]
    s.set_position(1, 0)
    epoch1 = list(s)
    assert epoch1 != epoch0
    again = ResumableBatchSampler(list(range(30)), batch_size=3, seed=1)
    again.set_position(1, 0)
    assert list(again) == epoch1


@pytest.mark.parametrize("seed", [0, 1])
def test_length_grouping_cuts_padding(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 400, (400,), generator=g).tolist()

    def padding(sampler):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                   for b in sampler)

    plain = ResumableBatchSampler(lengths, batch_size=8, seed=seed)
    grouped = ResumableBatchSampler(lengths, batch_size=8, seed=seed, group_by_length=True)
    assert sorted(i for b in grouped for i in b) == sorted(i for b in plain for i in b)
    assert padding(grouped) < padding(plain) / 3
