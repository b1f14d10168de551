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

import pytest
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


# ---- static KV cache, compiled step, batches (issue 15) ------------------------------------

def _run(llm, tok, ids, prompts, settings, seed):
    """generate_tokens + decode_reply, as the chat session runs them: (reply, every
    (token, hidden) pair the loop produced)."""
    from m2ugen.generate import decode_reply, generate_tokens

    pairs = []

    def tokens():
        for pair in generate_tokens(llm, ids, prompts, settings, seed):
            pairs.append(pair)
            yield pair

    pieces = decode_reply(tok, tokens(), llm.audio_token_ids)
    while True:
        try:
            next(pieces)
        except StopIteration as stop:
            return stop.value, pairs


def _prompt(model, message):
    from m2ugen.conversation import build_prompt_ids

    return build_prompt_ids(model.tokenizer, model.config.prompt_template, [], message, 1000)[0]


def test_static_cache_gives_the_dynamic_caches_tokens_and_aud_states(tiny_model, media_arrays):
    """fp32 CPU: the static cache (and no cache, as published) produce exactly the tokens
    of the dynamic one, with the picture injected, and the same [AUD] hidden states: the
    script makes the model start music at step 5."""
    llm, tok = tiny_model.llm, tiny_model.tokenizer
    aud = llm.audio_token_ids
    ids = _prompt(tiny_model, "Compose music for this picture")
    prompts = tiny_model.media_prompts(1, image=media_arrays["image"])
    runs = {}
    for name, kw in (("dynamic", {}), ("static", {"cache": "static"}),
                     ("none", {"use_cache": False})):
        with _lm_head(tiny_model, lambda call, logits: _favour(aud[0], logits) if call == 5
                      else logits):
            runs[name], _ = _run(llm, tok, ids, prompts, _greedy(40, **kw), 0)
    ref = runs["dynamic"]
    assert ref.audio_hidden is not None and ref.token_ids[-8:] == aud
    assert len(ref.token_ids) == 5 + 8
    for name in ("static", "none"):
        assert runs[name].token_ids == ref.token_ids, name
        assert runs[name].text == ref.text
        torch.testing.assert_close(runs[name].audio_hidden, ref.audio_hidden, atol=1e-5,
                                   rtol=1e-5)


def test_compiled_static_step_matches_eager_and_still_injects(tiny_model, media_arrays):
    """torch.compile of the one-token step: the eager tokens and hidden states, for two
    different injected inputs (so the compiled step applies the prompts: they change its
    states), with one compilation serving both generations."""
    llm, tok = tiny_model.llm, tiny_model.tokenizer
    ids = _prompt(tiny_model, "Describe this")
    states = {}
    for media in ("image", "audio"):
        prompts = tiny_model.media_prompts(1, **{media: media_arrays[media]})
        eager, eager_pairs = _run(llm, tok, ids, prompts, _greedy(16), 0)
        compiled, pairs = _run(llm, tok, ids, prompts, _greedy(16, cache="static",
                                                                compile=True), 0)
        assert compiled.token_ids == eager.token_ids
        assert len(pairs) == len(eager_pairs) > 1
        torch.testing.assert_close(torch.stack([h for _, h in pairs]),
                                   torch.stack([h for _, h in eager_pairs]),
                                   atol=1e-5, rtol=1e-5)
        states[media] = torch.stack([h for _, h in pairs])
    assert not torch.allclose(states["image"], states["audio"], atol=1e-3)


def test_compile_needs_the_static_cache():
    from m2ugen.errors import ChatError

    for kw in ({"compile": True}, {"compile": True, "cache": "static", "use_cache": False},
               {"cache": "paged"}):
        with pytest.raises(ChatError, match="cache"):
            GenerationSettings(**kw).validate()


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_a_left_padded_batch_gives_each_reply_alone(tiny_model, media_arrays, cache):
    """Three prompts of different lengths and inputs, sampled with their own seeds: the
    batch gives each the tokens, text and [AUD] states it gets alone (here music starts at
    step 7 for every row, and one row stops early at EOS at step 3)."""
    from m2ugen.generate import generate_batch

    llm, tok = tiny_model.llm, tiny_model.tokenizer
    aud = llm.audio_token_ids
    messages = ["Hi", "Compose a long jazz song with drums and piano for a rainy night",
                "Describe this music"]
    seqs = [_prompt(tiny_model, m) for m in messages]
    assert len({len(s) for s in seqs}) == 3  # so the batch is padded
    prompts = [tiny_model.media_prompts(1), tiny_model.media_prompts(1, image=media_arrays[
        "image"]), tiny_model.media_prompts(1, audio=media_arrays["audio"])]
    seeds = [5, 6, 7]
    settings = GenerationSettings(max_new_tokens=30, temperature=0.9, top_p=0.9, cache=cache)

    def script(eos_rows):
        def edit(call, logits):
            if call == 7:
                return _favour(aud[0], logits)
            out = logits.clone()
            if call == 3:  # the first prompt's reply ends here
                out[eos_rows, ..., tok.eos_token_id] += 1e4
            return out
        return edit

    alone = []
    for i, (s, p, seed) in enumerate(zip(seqs, prompts, seeds, strict=True)):
        with _lm_head(tiny_model, script([0] if i == 0 else [])):
            alone.append(_run(llm, tok, s, p, settings, seed)[0])
    with _lm_head(tiny_model, script([0])):
        batch = generate_batch(llm, tok, seqs, torch.cat(prompts, dim=1), settings, seeds)
    assert len(alone[0].token_ids) == 3 and alone[0].audio_hidden is None
    for one, row in zip(alone[1:], batch[1:], strict=True):
        assert row.token_ids == one.token_ids and row.text == one.text
        assert row.audio_hidden is not None
        torch.testing.assert_close(row.audio_hidden, one.audio_hidden, atol=1e-5, rtol=1e-5)
    assert batch[0].token_ids == alone[0].token_ids and batch[0].audio_hidden is None


@pytest.mark.parametrize("cut", [False, True])
def test_multibyte_text_streams_whole_and_a_cut_character_is_kept(tiny_model, cut):
    """"Hi 🎵 ok": the tiny tokenizer spells the note as four byte tokens. Streamed pieces
    never hold half a character, and they add up to the stored reply. When generation
    stops inside the character (max_new_tokens), the held-back bytes are still decoded
    into the reply, as the tokenizer decodes them: the text is that of the tokens."""
    tok = tiny_model.tokenizer
    script = tok("Hi 🎵 ok", add_special_tokens=False).input_ids
    note = next(i for i, t in enumerate(script) if "🎵" in tok.decode(script[:i + 1]))
    assert "🎵" not in tok.decode(script[note])  # the note spans several tokens
    n = note if cut else len(script)  # cut: stop one byte token before the note is whole
    ids = [*script[:n], tok.eos_token_id]

    def scripted(call: int, logits: torch.Tensor) -> torch.Tensor:
        return _favour(ids[min(call, len(ids) - 1)], logits)

    with _lm_head(tiny_model, scripted):
        stream = ChatSession(tiny_model).stream("Say hi.", settings=_greedy(n))
        pieces = list(stream)
    result = stream.result
    assert result.token_ids == script[:n]
    assert result.text == tok.decode(script[:n], skip_special_tokens=True).strip()
    assert "".join(pieces) == result.text
    if cut:
        assert result.text.startswith("Hi") and "🎵" not in result.text
        assert len(result.text) > len("Hi")  # the cut bytes are not dropped
    else:
        assert result.text == "Hi 🎵 ok"
        assert not any("\ufffd" in p for p in pieces)
