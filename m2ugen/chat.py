"""Chat sessions: a conversation with one model, its attached media, and its music.

The prompt is the published Alpaca template (`conversation.py`, ORIGINAL_M2UGEN.md §2);
earlier turns are kept in the same format and the oldest are dropped first when the
context is full. The token loop is `generate.py`; rendering music is `music.py`. A
session takes media as paths (loaded with the model's own `media_spec`) or as loaded
values, and keyword settings as well as settings objects. `send_batch` answers several
independent requests with one LLM call per batch, each as a fresh session would.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from m2ugen.conversation import Turn, build_prompt_ids
from m2ugen.errors import ChatError
from m2ugen.generate import (
    DecodedReply,
    GenerationSettings,
    decode_reply,
    generate_batch,
    generate_tokens,
)
from m2ugen.media import audio_source, load_media
from m2ugen.music import Judge, MusicResult, MusicSettings, render_music

__all__ = ["ChatRequest", "ChatResult", "ChatSession", "GenerationSettings", "ReplyStream",
           "check_utf8", "open_batch", "send_batch"]


def check_utf8(text: str, what: str) -> None:
    """ChatError when `text` holds lone surrogates: bytes that were not UTF-8 (a prompt
    from a Latin-1 terminal arrives through sys.argv as '\\udcff'; JSON may carry them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise ChatError(f"{what} is not valid UTF-8 text ({byte} at character {e.start}); "
                        "type it again, or set the terminal or file encoding to UTF-8") from e


@dataclass
class ChatResult:
    """One assistant reply.

    `audio_hidden` is (num_audio_tokens, D): the pre-norm last-layer hidden states at the
    positions predicting [AUD0..]; None when the reply holds no audio tokens.
    """

    text: str
    raw_text: str
    token_ids: list[int]
    audio_hidden: torch.Tensor | None
    inputs_used: tuple[str, ...]
    seed: int
    dropped_turns: int = 0
    music: MusicResult | None = None
    turn: int = 0  # this reply's number in its session (1 = the first reply)
    message: str = ""  # the user's message it answers (what a judge ranks music against)

    @property
    def has_audio_tokens(self) -> bool:
        return self.audio_hidden is not None


class ReplyStream:
    """Iterate for text pieces as they are generated; `.result` holds the final reply."""

    def __init__(self, session: ChatSession, instruction: str, ids: list[int],
                 prompts: torch.Tensor, settings: GenerationSettings, seed: int,
                 inputs_used: tuple[str, ...], dropped: int) -> None:
        self._session = session
        self._instruction = instruction
        self._ids = ids
        self._prompts = prompts
        self._tokens = generate_tokens(session.model.llm, ids, prompts, settings, seed)
        self._seed = seed
        self._inputs_used = inputs_used
        self._dropped = dropped
        self.result: ChatResult | None = None

    def close(self) -> None:
        """Stop generating (e.g. the user pressed Stop): ends the token generator, which
        releases its KV cache and injection state."""
        self._tokens.close()

    def __iter__(self) -> Iterator[str]:
        tok = self._session.model.tokenizer
        audio_ids = self._session.model.llm.audio_token_ids
        reply = yield from decode_reply(tok, self._tokens, audio_ids)
        self.result = self._session._record(self._instruction, self._ids, self._prompts, reply,
                                            self._seed, self._inputs_used, self._dropped)


class ChatSession:
    """A conversation with one model: history plus the media attached so far.

    Media attached in a turn stays in the conversation until replaced, so follow-up
    questions about the same song still see it. `judge` ranks music candidates for
    `rerank` (e.g. `m2ugen.eval.judge.ClapJudge.load(hub_id)`); it may be set later.

    The music of a request is the conversation's audio when it is the newest attachment
    (attached in this turn or earlier, with no picture or video after it): with
    `source="hear"` the decoder hears it, so an edit keeps the song (music.py).
    """

    def __init__(self, model, max_context: int | None = None,
                 judge: Judge | None = None) -> None:
        self.model = model
        self.judge = judge
        limit = model.llm.hf_config.max_position_embeddings
        self.max_context = min(max_context or model.config.max_context, limit)
        self.history: list[Turn] = []
        self.media: dict[str, Any] = {}
        # the newest reply with what produced it (prompt ids, injected prompts): music
        # forced onto a reply without [AUD] tokens re-runs them (`render`, music="always")
        self._last: tuple[int, list[int], torch.Tensor] | None = None
        self._turns = 0
        self._attached: list[str] = []  # modalities, the newest attachment last
        self._source: tuple[np.ndarray, int] | None = None  # the audio, at its own rate
        self._sources: dict[int, tuple[np.ndarray, int]] = {}  # turn → its request's music

    def reset(self) -> None:
        self.history.clear()
        self.media.clear()
        self._last = None
        self._attached.clear()
        self._source = None
        self._sources.clear()

    def _record(self, instruction: str, ids: list[int], prompts: torch.Tensor,
                reply: DecodedReply, seed: int, inputs_used: tuple[str, ...],
                dropped: int) -> ChatResult:
        """The finished reply as a ChatResult, kept in the history with its context (prompt
        ids, injected prompts: `render` may re-run them)."""
        tok = self.model.tokenizer
        audio_ids = self.model.llm.audio_token_ids
        raw = reply.text + (" " + "".join(tok.convert_ids_to_tokens(audio_ids))
                            if reply.audio_hidden is not None else "")
        self._turns += 1
        self._last = (self._turns, ids, prompts)
        self.history.append(Turn(instruction, raw.strip()))
        return ChatResult(text=reply.text, raw_text=raw.strip(), token_ids=reply.token_ids,
                          audio_hidden=reply.audio_hidden, inputs_used=inputs_used, seed=seed,
                          dropped_turns=dropped, turn=self._turns, message=instruction)

    def stream(self, message: str, *, audio: Any = None, image: Any = None, video: Any = None,
               settings: GenerationSettings | None = None, **options: Any) -> ReplyStream:
        """Start a reply to `message`; iterate the returned stream for text pieces.

        Media are paths (loaded with the model's own `media_spec`) or loaded values.
        Sampling options come as `settings` or as keywords (`seed=0, temperature=0`).
        """
        settings = _settings(GenerationSettings, settings, options)
        settings.validate()
        return ReplyStream(self, message, *self._prepare(message, audio, image, video, settings))

    def _prepare(self, message: str, audio: Any, image: Any, video: Any,
                 settings: GenerationSettings
                 ) -> tuple[list[int], torch.Tensor, GenerationSettings, int, tuple[str, ...], int]:
        """Check the message, attach the media, build the prompt: (prompt ids, injected
        prompts (3Q, 1, D), settings, seed, inputs used, turns dropped)."""
        if not message.strip():
            raise ChatError("the message is empty; type an instruction or a question")
        check_utf8(message, "the message")
        spec = self.model.media_spec
        for name, value in (("audio", audio), ("image", image), ("video", video)):
            if value is not None:
                self.media[name] = load_media(name, value, spec)
                if name == "audio":
                    self._source = audio_source(value, spec)
                self._attached = [m for m in self._attached if m != name] + [name]
        budget = self.max_context - settings.max_new_tokens
        if budget < 2:
            raise ChatError(f"max_new_tokens={settings.max_new_tokens} leaves no room for the "
                            f"prompt in a {self.max_context}-token context; lower it")
        ids, dropped = build_prompt_ids(self.model.tokenizer, self.model.config.prompt_template,
                                        self.history, message, budget)
        del self.history[:dropped]
        with torch.no_grad():
            prompts = self.model.media_prompts(1, **self.media)
        seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(
            2**31)
        if self._attached and self._attached[-1] == "audio" and self._source is not None:
            self._sources[self._turns + 1] = self._source
        else:
            self._sources.pop(self._turns + 1, None)
        return ids, prompts, settings, seed, tuple(sorted(self.media)), dropped

    def render(self, result: ChatResult, settings: MusicSettings) -> MusicResult | None:
        """Render music for `result` per `settings.music`; stores it in `result.music`.

        With music="always" and a reply that holds no [AUD] tokens, the tokens are appended
        after the reply and run through the LLM to get their hidden states.
        """
        settings.validate()
        if settings.music == "never":
            return None
        if result.audio_hidden is None and settings.music == "auto":
            return None
        hidden = self.audio_states(result)
        result.music = render_music(self.model, hidden, result.text, settings, self.judge,
                                    result.message, self._sources.get(result.turn))
        return result.music

    def audio_states(self, result: ChatResult) -> torch.Tensor:
        """The (8, D) [AUD] hidden states that condition `result`'s music: the reply's own,
        or, for a reply without [AUD] tokens (the newest reply only), those of the tokens
        appended after its text and run through the LLM (then kept in `result`)."""
        hidden = result.audio_hidden
        if hidden is None:
            if self._last is None or self._last[0] != result.turn:
                raise ChatError("music='always' can add music only to the newest reply of "
                                "this session; ask again, or use music='auto'")
            _, prompt_ids, prompts = self._last
            model = self.model
            tok = model.tokenizer
            text_ids = tok(result.text, add_special_tokens=False).input_ids if result.text else []
            ids = [*prompt_ids, *text_ids, *model.llm.audio_token_ids]
            hidden = model.audio_token_hidden(ids, prompts)
            result.audio_hidden = hidden
            tokens = "".join(model.config.audio_tokens)
            result.raw_text = f"{result.text} {tokens}".strip()
            if self.history and self.history[-1].assistant == result.text:
                self.history[-1].assistant = result.raw_text
        return hidden

    def send(self, message: str, music: MusicSettings | str | None = None, *,
             audio: Any = None, image: Any = None, video: Any = None,
             settings: GenerationSettings | None = None, **options: Any) -> ChatResult:
        """Generate the whole reply and, per `music`, render its music into `result.music`.

        `music` is a MusicSettings or a mode ("auto", "always", "never"); keyword options go
        to the sampling settings or the music settings by name (`seed` to both), e.g.
        `send("Compose music for this picture", image="pic.png", music="always", seconds=8)`.
        """
        gen_opts = {k: v for k, v in options.items() if k in _FIELDS[GenerationSettings]}
        music_opts = {k: v for k, v in options.items() if k in _FIELDS[MusicSettings]}
        unknown = set(options) - set(gen_opts) - set(music_opts)
        if unknown:
            raise ChatError(f"unknown option(s) {', '.join(sorted(unknown))}; sampling options "
                            f"are {', '.join(sorted(_FIELDS[GenerationSettings]))}, music "
                            f"options {', '.join(sorted(_FIELDS[MusicSettings]))}")
        if isinstance(music, str):
            music = MusicSettings(music=music, **music_opts)
        elif music is None:  # music options alone ask for music; a seed alone is for sampling
            music = MusicSettings(**music_opts) if set(music_opts) - {"seed"} else None
        elif music_opts:
            music = dataclasses.replace(music, **music_opts)
        if music is not None:
            music.validate()  # before spending time on the reply
        stream = self.stream(message, audio=audio, image=image, video=video,
                             settings=settings, **gen_opts)
        for _ in stream:
            pass
        assert stream.result is not None
        if music is not None:
            self.render(stream.result, music)
        return stream.result


_FIELDS = {cls: {f.name for f in dataclasses.fields(cls)}
           for cls in (GenerationSettings, MusicSettings)}


@dataclass
class ChatRequest:
    """One request of `send_batch`: the first message of a fresh conversation, its media
    (paths or loaded values), and optionally its own seed and music mode."""

    message: str
    audio: Any = None
    image: Any = None
    video: Any = None
    seed: int | None = None  # sampling and music; None: the batch settings' seed
    music: str | None = None  # auto / always / never; None: the batch's music settings


def send_batch(model, requests: Sequence[ChatRequest | str],
               settings: GenerationSettings | None = None, music: MusicSettings | None = None,
               batch_size: int = 8, judge: Judge | None = None) -> list[ChatResult]:
    """Answer independent requests, the LLM generating `batch_size` replies at once (prompts
    padded on the left). Each result, its music included, is what a fresh
    `ChatSession(model).send(r.message, music, audio=r.audio, …, seed=r.seed)` returns
    (same tokens and text; the [AUD] states agree to float rounding). `music` None with no
    request's `music` set: text only. Music is rendered one reply at a time."""
    if music is not None:
        music.validate()
    reqs = [ChatRequest(r) if isinstance(r, str) else r for r in requests]  # for their music
    results = []
    for (session, result), req in zip(open_batch(model, reqs, settings, batch_size, judge),
                                      reqs, strict=True):
        wanted = _request_music(music, req)
        if wanted is not None:
            session.render(result, wanted)
        results.append(result)
    return results


def open_batch(model, requests: Sequence[ChatRequest | str],
               settings: GenerationSettings | None = None, batch_size: int = 8,
               judge: Judge | None = None) -> list[tuple[ChatSession, ChatResult]]:
    """`send_batch` without music: each request's fresh session after its first reply,
    with the reply — the session still holds the prompt, so `session.audio_states(result)`
    gives a text reply's [AUD] states as the chat would (what evaluation renders from)."""
    settings = settings if settings is not None else GenerationSettings()
    settings.validate()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ChatError(f"batch_size={batch_size!r}: use a whole number of at least 1")
    reqs = [ChatRequest(r) if isinstance(r, str) else r for r in requests]
    out: list[tuple[ChatSession, ChatResult]] = []
    for start in range(0, len(reqs), batch_size):
        chunk = reqs[start:start + batch_size]
        sessions, prepared = [], []
        for n, req in enumerate(chunk, start + 1):
            session = ChatSession(model, judge=judge)
            own = settings if req.seed is None else dataclasses.replace(settings, seed=req.seed)
            try:
                own.validate()
                prepared.append(session._prepare(req.message, req.audio, req.image, req.video,
                                                 own))
            except ChatError as e:
                raise ChatError(f"request {n}: {e}") from e
            sessions.append(session)
        replies = generate_batch(model.llm, model.tokenizer, [p[0] for p in prepared],
                                 torch.cat([p[1] for p in prepared], dim=1), settings,
                                 [p[3] for p in prepared])
        for session, req, (ids, prompts, _, seed, used, dropped), reply in zip(
                sessions, chunk, prepared, replies, strict=True):
            out.append((session, session._record(req.message, ids, prompts, reply, seed,
                                                  used, dropped)))
    return out


def _request_music(music: MusicSettings | None, req: ChatRequest) -> MusicSettings | None:
    """The music settings of one request: the batch's, with its own mode and seed."""
    if music is None and req.music is None:
        return None
    out = music if music is not None else MusicSettings()
    if req.music is not None:
        out = dataclasses.replace(out, music=req.music)
    if req.seed is not None:
        out = dataclasses.replace(out, seed=req.seed)
    out.validate()
    return out


def _settings(cls: type, settings: Any, options: dict[str, Any]) -> Any:
    """`settings` (or the defaults) with keyword `options` applied; unknown names are a
    ChatError that lists the valid ones."""
    unknown = set(options) - _FIELDS[cls]
    if unknown:
        raise ChatError(f"unknown option(s) {', '.join(sorted(unknown))}; use "
                        f"{', '.join(sorted(_FIELDS[cls]))}")
    base = settings if settings is not None else cls()
    return dataclasses.replace(base, **options) if options else base
