"""The token loop's contracts (generate.py) that a refactor of generation can silently
break: what top-p draws, where a reply stops, and that [AUD1..7] never start music.

The tiny LLM is untrained, so where a test needs the model to *choose* something (a token,
a scripted reply, a given distribution) it edits the LM head's output (a large bias on one
token, or replaced logits): that constructs the sampler's input; the loop around it
(masking, sampling, detokenising, stopping, history) is what is tested, unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from m2ugen.chat import ChatSession, GenerationSettings
from m2ugen.conversation import Turn


def _greedy(n: int, **kw) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=n, temperature=0.0, seed=0, **kw)


@contextmanager
def _lm_head(model, edit: Callable[[int, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace every LM-head output (B, T, V) by `edit(forward_call_index, logits)`.

    With the KV cache each generation step is one forward call, so a step-dependent edit
    scripts a reply token by token."""
    head = model.llm.model.get_output_embeddings()
    calls = [0]

    def hook(module, args, output):
        calls[0] += 1
        return edit(calls[0] - 1, output)

    handle = head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _favour(token: int, logits: torch.Tensor, value: float = 1e4) -> torch.Tensor:
    """`logits` plus a large bias on `token`: it becomes the greedy choice."""
    out = logits.clone()
    out[..., token] += value
    return out


def test_top_p_keeps_the_smallest_set_reaching_p(tiny_model):
    """p = 0.6 over probabilities (.5, .3, .2): the nucleus is the first two tokens, so
    the third is never drawn and both others are."""
    tok = tiny_model.tokenizer
    words = [" piano", " drums", " jazz"]
    ids = [tok(w, add_special_tokens=False).input_ids[0] for w in words]
    assert len(set(ids)) == 3

    def three_tokens(call: int, logits: torch.Tensor) -> torch.Tensor:
        # the model's logits replaced: -inf everywhere but the three log-probabilities
        out = torch.full_like(logits, float("-inf"))
        for t, p in zip(ids, (0.5, 0.3, 0.2), strict=True):
            out[..., t] = math.log(p)
        return out

    settings = GenerationSettings(max_new_tokens=300, temperature=1.0, top_p=0.6, seed=11)
    with _lm_head(tiny_model, three_tokens):
        result = ChatSession(tiny_model).send("Name a word.", settings=settings)
    counts = {t: result.token_ids.count(t) for t in ids}
    assert sum(counts.values()) == len(result.token_ids) == 300
    assert counts[ids[2]] == 0, counts
    assert counts[ids[0]] > 0 and counts[ids[1]] > 0, counts
    # the kept two are drawn in proportion .5 : .3 (renormalised: 0.625), loosely
    assert 0.5 < counts[ids[0]] / 300 < 0.75, counts


def test_stop_text_is_cut_from_shown_streamed_and_stored_reply(tiny_model):
    """A reply generated as "Hello\\n### Instruction: x" is "Hello" everywhere."""
    tok = tiny_model.tokenizer
    script = [*tok("Hello\n### Instruction: x", add_special_tokens=False).input_ids,
              tok.eos_token_id]

    def scripted(call: int, logits: torch.Tensor) -> torch.Tensor:
        return _favour(script[min(call, len(script) - 1)], logits)

    session = ChatSession(tiny_model)
    with _lm_head(tiny_model, scripted):
        stream = session.stream("Say hello.", settings=_greedy(len(script) + 4))
        pieces = list(stream)
    result = stream.result
    # the script ran up to the stop text, and generation stopped there
    assert tok.decode(result.token_ids) == "Hello\n###"
    assert "".join(pieces) == "Hello"
    assert not any("#" in p for p in pieces)
    assert result.text == result.raw_text == "Hello"
    assert session.history == [Turn("Say hello.", "Hello")]


def test_aud3_before_aud0_is_never_generated(tiny_model):
    """[AUD1..7] only follow [AUD0]: with [AUD3] the model's favourite at every step, the
    reply holds no [AUD] token at all and no music states."""
    aud = tiny_model.llm.audio_token_ids
    message = "Compose music for a rainy street."
    with _lm_head(tiny_model, lambda call, logits: _favour(aud[3], logits)):
        # the bias does make [AUD3] the unmasked greedy choice
        logits = tiny_model.forward_logits(torch.tensor([[tiny_model.tokenizer.bos_token_id,
                                                          50, 60, 70]]))
        assert int(logits[0, -1].argmax()) == aud[3]
        result = ChatSession(tiny_model).send(message, settings=_greedy(12))
    assert len(result.token_ids) > 0
    assert not set(result.token_ids) & set(aud), result.token_ids
    assert not result.has_audio_tokens
    assert "[AUD" not in result.raw_text and "[AUD" not in result.text
