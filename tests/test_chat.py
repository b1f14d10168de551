"""Generation: KV cache vs. full re-run, sampling determinism, streaming, [AUD] hidden states."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import pytest
import torch

from m2ugen.chat import ChatSession, GenerationSettings
from m2ugen.conversation import Turn, build_prompt_ids, format_prompt
from m2ugen.errors import ChatError
from m2ugen.modules.llm import Injection
from m2ugen.music import MusicSettings


def _greedy(n: int = 24, **kw) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=n, temperature=0.0, seed=0, **kw)


def test_kv_cache_equals_uncached_greedy(tiny_model, media_arrays):
    cached = ChatSession(tiny_model).send("Describe this music.", audio=media_arrays["audio"],
                                          settings=_greedy(40))
    full = ChatSession(tiny_model).send("Describe this music.", audio=media_arrays["audio"],
                                        settings=_greedy(40, use_cache=False))
    assert len(cached.token_ids) > 5
    assert cached.token_ids == full.token_ids


def test_same_seed_same_reply_and_media_changes_it(tiny_model, media_arrays):
    s = GenerationSettings(max_new_tokens=30, temperature=1.0, top_p=0.95, seed=7)
    a = ChatSession(tiny_model).send("What genre is this?", settings=s)
    b = ChatSession(tiny_model).send("What genre is this?", settings=s)
    assert a.token_ids == b.token_ids and a.seed == 7
    c = ChatSession(tiny_model).send("What genre is this?", image=media_arrays["image"],
                                     settings=_greedy(30))
    d = ChatSession(tiny_model).send("What genre is this?", settings=_greedy(30))
    assert c.token_ids != d.token_ids
    assert c.inputs_used == ("image",) and d.inputs_used == ()


def test_stream_pieces_build_the_reply(tiny_model):
    stream = ChatSession(tiny_model).stream("Describe the music.", settings=_greedy(30))
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces).strip() == stream.result.text


def test_multi_turn_history_reaches_the_model(tiny_model):
    session = ChatSession(tiny_model)
    first = session.send("What instruments are playing?", settings=_greedy(12))
    assert session.history == [Turn("What instruments are playing?", first.raw_text)]
    second = session.send("What is the tempo of this song?", settings=_greedy(12))
    fresh = ChatSession(tiny_model).send("What is the tempo of this song?", settings=_greedy(12))
    assert second.token_ids != fresh.token_ids  # the earlier turn changed the prompt


def test_history_truncation_drops_oldest_first(tiny_model):
    tok = tiny_model.tokenizer
    template = tiny_model.config.prompt_template
    history = [Turn(f"question {i} " + "piano " * 20, f"answer {i}") for i in range(6)]
    full, dropped = build_prompt_ids(tok, template, history, "last one", budget=10_000)
    assert dropped == 0
    budget = len(full) - 30
    ids, dropped = build_prompt_ids(tok, template, history, "last one", budget)
    assert 0 < dropped < 6 and len(ids) <= budget
    text = tok.decode(ids[1:])
    assert "question 5" in text and "question 0" not in text and text.endswith("### Response:")
    assert ids == [tok.bos_token_id, *tok(format_prompt(template, history[dropped:], "last one"),
                                          add_special_tokens=False).input_ids]
    with pytest.raises(ChatError, match="only 5 fit"):
        build_prompt_ids(tok, template, [], "a long message " * 50, budget=5)


def test_session_drops_turns_when_context_is_full(tiny_model):
    session = ChatSession(tiny_model, max_context=160)
    for i in range(6):
        session.send(f"Tell me about song number {i} with piano and drums.", settings=_greedy(8))
    assert len(session.history) < 6
    assert session.history[-1].user.startswith("Tell me about song number 5")


@contextmanager
def _prefer_audio_token(model, prompt_ids, prompts, scale: float = 50.0):
    """Make [AUD0] the greedy first token (a trained-model stand-in): point its output row
    along the final hidden state of the prompt's last position."""
    head = model.llm.model.get_output_embeddings()
    rows = head.token_adapter.trainable_tokens_delta["default"]
    saved = rows.detach().clone()
    with torch.no_grad():
        last = model.llm(torch.tensor([prompt_ids]), injection=Injection(prompts),
                         output_hidden_states=True, use_cache=False).hidden_states[-1][0, -1]
        rows[0] = scale * last / last.norm()
    try:
        yield
    finally:
        with torch.no_grad():
            rows.copy_(saved)


def test_audio_tokens_are_forced_and_their_hidden_states_returned(tiny_model, media_arrays):
    session = ChatSession(tiny_model)
    llm = tiny_model.llm
    message = "Compose music for this picture."
    prompt, _ = build_prompt_ids(tiny_model.tokenizer, tiny_model.config.prompt_template, [],
                                 message, 10_000)
    with torch.no_grad():
        prompts = tiny_model.media_prompts(1, image=media_arrays["image"])
    with _prefer_audio_token(tiny_model, prompt, prompts):
        result = session.send(message, image=media_arrays["image"], settings=_greedy(30))
        aud = llm.audio_token_ids
        assert result.has_audio_tokens
        assert result.audio_hidden.shape == (8, tiny_model.config.llm_dim)
        assert result.token_ids == aud  # [AUD0] first, [AUD1..7] forced after it, then stop
        assert result.raw_text.endswith("".join(tiny_model.config.audio_tokens))
        # independent check: the final norm of our pre-norm states equals HF's last hidden
        # state at the positions whose next token is [AUDi]
        seq = torch.tensor([prompt + result.token_ids])
        with torch.no_grad():
            out = llm(seq, injection=Injection(prompts), output_hidden_states=True,
                      use_cache=False)
    pos = [len(prompt) + i - 1 for i, t in enumerate(result.token_ids) if t in aud]
    norm = llm.model.get_base_model().model.norm
    torch.testing.assert_close(norm(result.audio_hidden), out.hidden_states[-1][0, pos],
                               atol=1e-4, rtol=1e-4)


def test_bad_settings_are_user_errors(tiny_model):
    session = ChatSession(tiny_model)
    with pytest.raises(ChatError, match="top_p"):
        session.send("hi", settings=GenerationSettings(top_p=0))
    with pytest.raises(ChatError, match="empty"):
        session.send("   ")
    with pytest.raises(ChatError, match="max_new_tokens"):
        session.send("hi", settings=GenerationSettings(max_new_tokens=5000))


def test_two_threads_chatting_with_one_model_get_the_sequential_replies(tiny_model,
                                                                        media_arrays,
                                                                        lockstep):
    """Generation state lives in the call (Injection, KV cache), not on the shared model:
    two sessions generating at once, their steps interleaved, reply exactly as alone."""
    jobs = [("Describe this music", {"audio": media_arrays["audio"]}, 11),
            ("Compose music for this picture", {"image": media_arrays["image"]}, 12)]
    settings = [GenerationSettings(max_new_tokens=24, temperature=0.9, top_p=0.95, seed=s)
                for _, _, s in jobs]

    def reply(i: int, step=None):
        message, media, _ = jobs[i]
        stream = ChatSession(tiny_model).stream(message, settings=settings[i], **media)
        for _ in stream:  # one token at a time: the two threads' forwards interleave
            if step is not None:
                step()
        return stream.result

    alone = [reply(0), reply(1)]
    assert alone[0].text != alone[1].text  # different inputs: the check below means something
    together = lockstep(reply)
    for a, b in zip(alone, together, strict=True):
        assert b.token_ids == a.token_ids and b.text == a.text


def test_forced_music_needs_the_newest_reply(tiny_model):
    """music='always' on a reply without [AUD] tokens re-runs that reply's prompt: only the
    newest reply's is kept, so an older one is a ChatError, not music of the wrong turn."""
    session = ChatSession(tiny_model)
    greedy = GenerationSettings(max_new_tokens=4, temperature=0.0, seed=0)
    first = session.send("Describe this.", settings=greedy)
    second = session.send("And now?", settings=greedy)
    assert (first.turn, second.turn) == (1, 2)
    assert not first.has_audio_tokens and not second.has_audio_tokens
    settings = MusicSettings(music="always", seconds=0.2, seed=0)
    with pytest.raises(ChatError, match="newest reply"):
        session.render(first, settings)
    unrendered = dataclasses.replace(second, audio_hidden=None)
    assert session.render(second, settings) is not None
    session.reset()  # a new conversation: no reply is the newest one any more
    with pytest.raises(ChatError, match="newest reply"):
        session.render(unrendered, settings)


def test_history_keeps_the_newest_turns(tiny_model):
    """When the context is full the oldest turns go: what is kept (and what the model is
    prompted with) is always the newest suffix of the history that was sent."""
    tok = tiny_model.tokenizer
    template = tiny_model.config.prompt_template
    session = ChatSession(tiny_model, max_context=250)
    partial_drops = 0
    embed = tiny_model.llm.model.get_input_embeddings()
    seen: list[list[int]] = []  # the ids of every forward: the first of a reply is its prompt
    handle = embed.register_forward_pre_hook(lambda m, args: seen.append(args[0][0].tolist()))
    for i in range(8):
        before = list(session.history)
        message = f"Song {i}?"
        seen.clear()
        result = session.send(message, settings=GenerationSettings(max_new_tokens=6,
                                                                   temperature=0.0, seed=0))
        kept = before[result.dropped_turns:]
        assert session.history[:-1] == kept  # a suffix of `before`, by construction
        assert session.history[-1].user == message
        prompt = format_prompt(template, kept, message)
        assert seen[0] == [tok.bos_token_id, *tok(prompt, add_special_tokens=False).input_ids]
        partial_drops += 0 < result.dropped_turns < len(before)
    handle.remove()
    # discriminating: some turns were dropped while others stayed (dropping all of them
    # reads the same from either end)
    assert partial_drops > 0
    assert [t.user for t in session.history] == [f"Song {i}?"
                                                 for i in range(8 - len(session.history), 8)]


def test_send_batch_answers_each_request_as_a_fresh_session_would(tiny_model, media_arrays):
    """Three requests of different lengths and inputs, sampled, in one LLM batch: the same
    text, tokens, seed and — where music was asked for — the same waveform as
    `ChatSession(model).send` of each alone; a request's own seed and music mode win."""
    import numpy as np

    from m2ugen.chat import ChatRequest, send_batch

    settings = GenerationSettings(max_new_tokens=20, temperature=0.8, seed=9)
    music = MusicSettings(music="never", seconds=0.5)
    requests = [ChatRequest("Compose music for this picture", image=media_arrays["image"],
                            seed=3, music="always"),
                ChatRequest("Describe a calm song with a slow piano", seed=4),
                ChatRequest("Hi", audio=media_arrays["audio"])]
    results = send_batch(tiny_model, requests, settings, music, batch_size=3)
    for req, result in zip(requests, results, strict=True):
        own = settings if req.seed is None else dataclasses.replace(settings, seed=req.seed)
        wanted = dataclasses.replace(music, music=req.music or music.music,
                                     seed=req.seed if req.seed is not None else music.seed)
        alone = ChatSession(tiny_model).send(req.message, wanted, audio=req.audio,
                                             image=req.image, settings=own)
        assert result.seed == alone.seed == (req.seed if req.seed is not None else 9)
        assert result.token_ids == alone.token_ids and result.text == alone.text
        assert result.inputs_used == alone.inputs_used
        assert (result.music is None) == (alone.music is None) == (req.music != "always")
        if alone.music is not None:
            np.testing.assert_array_equal(result.music.waveforms, alone.music.waveforms)
    with pytest.raises(ChatError, match="request 2: the message is empty"):
        send_batch(tiny_model, ["Hi", "  "], settings)
