"""Token generation (KV cache, sampling, streaming) and chat turns.

The prompt is the published Alpaca template (ORIGINAL_M2UGEN.md §2); earlier turns are
kept in the same format and the oldest are dropped first when the context is full.
Generation stops at EOS, at a new "\\n###", or after the last [AUD] token. Once the model
emits [AUD0] the remaining [AUD1..] tokens are forced, and the hidden states (last layer,
before the final norm) at the positions that predict each [AUDi] are returned: they are
the input of the music generation path.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, TopPLogitsWarper

from m2ugen.conversation import STOP_TEXT, Turn, build_prompt_ids
from m2ugen.errors import ChatError, check_number, check_seed
from m2ugen.media import load_media
from m2ugen.modules.llm import Injection
from m2ugen.music import MusicResult, MusicSettings, render_music

MIN_TEMPERATURE = 1e-4  # below it (but above 0, greedy) sampling is greedy in all but name


@dataclass
class GenerationSettings:
    """Sampling settings; temperature 0 means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.6  # published demo settings
    top_p: float = 0.8
    seed: int | None = None
    use_cache: bool = True

    def validate(self, name: Callable[[str], str] = str) -> None:
        """Raise ChatError on a value no reply can be made with (NaN, ±inf, out of range,
        not a number); normalises integral floats (a slider's 128.0) to ints. `name` turns a
        field into the option as the user wrote it (`errors.flag_name` for the CLI, the
        slider labels in the app)."""
        self.max_new_tokens = check_number(self.max_new_tokens, name("max_new_tokens"),
                                           integer=True, minimum=1, error=ChatError)
        self.temperature = check_number(self.temperature, name("temperature"), minimum=0.0,
                                        error=ChatError)
        if 0 < self.temperature < MIN_TEMPERATURE:  # logits / 1e-300 overflow to inf → NaN
            raise ChatError(f"{name('temperature')} {self.temperature:g} is too small to "
                            f"sample with; use 0 for greedy decoding or at least "
                            f"{MIN_TEMPERATURE:g}")
        self.top_p = check_number(self.top_p, name("top_p"), above=0.0, maximum=1.0,
                                  error=ChatError)
        if self.seed is not None:
            self.seed = check_seed(self.seed, name("seed"), error=ChatError)


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
    prompt_ids: list[int] = field(default_factory=list, repr=False)
    media_prompts: torch.Tensor | None = field(default=None, repr=False)

    @property
    def has_audio_tokens(self) -> bool:
        return self.audio_hidden is not None


def _sample(logits: torch.Tensor, settings: GenerationSettings,
            gen: torch.Generator) -> torch.Tensor:
    """(1, V) logits → (1,) next token."""
    if settings.temperature == 0:
        return logits.argmax(-1)
    scores = logits / settings.temperature
    if settings.top_p < 1:
        scores = TopPLogitsWarper(settings.top_p)(None, scores)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


def generate_tokens(llm, ids: list[int], prompts: torch.Tensor, settings: GenerationSettings,
                    seed: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (token id, pre-norm hidden state (D,) that predicted it), one per step.

    With `use_cache` the KV cache makes each step one token; without it the whole
    sequence is re-run every step (the published behaviour; kept for comparison).
    """
    device = prompts.device
    gen = torch.Generator(device=device).manual_seed(seed)
    audio_ids = llm.audio_token_ids
    seq = torch.tensor([ids], device=device)
    step_input = seq
    cache = DynamicCache() if settings.use_cache else None
    forced: list[int] = []
    # this generation's own injection state (prompts, per-layer term cache, capture list):
    # nothing is stored on the shared model, so several threads can generate at once
    injection = Injection(prompts, capture=[])
    for _ in range(settings.max_new_tokens):
        with torch.no_grad():  # per step: a generator must not leave grad mode off between yields
            if cache is not None:
                out = llm(step_input, injection=injection, past_key_values=cache,
                          use_cache=True)
            else:
                out = llm(seq, injection=injection, use_cache=False)
        hidden = injection.capture[-1][0, -1]
        injection.capture.clear()
        if forced:
            token = forced.pop(0)
        else:
            logits = out.logits[:, -1].float()
            logits[:, audio_ids[1:]] = float("-inf")  # [AUD1..] only follow [AUD0]
            token = int(_sample(logits, settings, gen)[0])
            if token == audio_ids[0]:
                forced = list(audio_ids[1:])
        yield token, hidden
        step_input = torch.tensor([[token]], device=device)
        seq = torch.cat([seq, step_input], dim=1)


def _partial_stop(text: str) -> int:
    """Length of the longest tail of `text` that could begin the stop text."""
    for k in range(len(STOP_TEXT) - 1, 0, -1):
        if text.endswith(STOP_TEXT[:k]):
            return k
    return 0


def _flush(tok, ids: list[int], prefix_offset: int, read_offset: int) -> str:
    """Text of tokens still held back when generation ended (even if incomplete UTF-8)."""
    if read_offset >= len(ids):
        return ""
    before = tok.decode(ids[prefix_offset:read_offset], skip_special_tokens=True)
    return tok.decode(ids[prefix_offset:], skip_special_tokens=True)[len(before):]


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
        llm = self._session.model.llm
        audio_ids = llm.audio_token_ids
        text_ids: list[int] = []
        all_ids: list[int] = []
        hidden_at: dict[int, torch.Tensor] = {}
        # Incremental detokenisation over a sliding window (prefix_offset..): text is taken
        # only once it no longer ends in an incomplete UTF-8 byte sequence, so what has been
        # shown never changes afterwards.
        text, shown, prefix_offset, read_offset = "", 0, 0, 0
        stopped = False
        for token, hidden in self._tokens:
            if token == tok.eos_token_id:
                break
            all_ids.append(token)
            if token in audio_ids:
                hidden_at[audio_ids.index(token)] = hidden
                if token == audio_ids[-1]:
                    break
                continue
            text_ids.append(token)
            before = tok.decode(text_ids[prefix_offset:read_offset], skip_special_tokens=True)
            after = tok.decode(text_ids[prefix_offset:], skip_special_tokens=True)
            if len(after) > len(before) and not after.endswith("\ufffd"):
                text += after[len(before):]
                prefix_offset, read_offset = read_offset, len(text_ids)
            if STOP_TEXT in text:
                text, stopped = text[:text.index(STOP_TEXT)], True
                break
            stable = len(text) - _partial_stop(text)
            if stable > shown:
                yield text[shown:stable]
                shown = stable
        if not stopped:
            text = (text + _flush(tok, text_ids, prefix_offset, read_offset)).split(STOP_TEXT)[0]
        text = text.rstrip()
        if len(text) > shown:
            yield text[shown:]
        final = text.strip()
        audio_hidden = None
        if len(hidden_at) == len(audio_ids):
            audio_hidden = torch.stack([hidden_at[i] for i in range(len(audio_ids))])
        raw = final + (" " + "".join(tok.convert_ids_to_tokens(audio_ids))
                       if audio_hidden is not None else "")
        self.result = ChatResult(text=final, raw_text=raw.strip(), token_ids=all_ids,
                                 audio_hidden=audio_hidden, inputs_used=self._inputs_used,
                                 seed=self._seed, dropped_turns=self._dropped,
                                 prompt_ids=self._ids, media_prompts=self._prompts)
        self._session.history.append(Turn(self._instruction, raw.strip()))


class ChatSession:
    """A conversation with one model: history plus the media attached so far.

    Media attached in a turn stays in the conversation until replaced, so follow-up
    questions about the same song still see it.
    """

    def __init__(self, model, max_context: int | None = None) -> None:
        self.model = model
        limit = model.llm.hf_config.max_position_embeddings
        self.max_context = min(max_context or model.config.max_context, limit)
        self.history: list[Turn] = []
        self.media: dict[str, Any] = {}

    def reset(self) -> None:
        self.history.clear()
        self.media.clear()

    def stream(self, message: str, *, audio: Any = None, image: Any = None, video: Any = None,
               settings: GenerationSettings | None = None, **options: Any) -> ReplyStream:
        """Start a reply to `message`; iterate the returned stream for text pieces.

        Media are paths (loaded with the model's own `media_spec`) or loaded values.
        Sampling options come as `settings` or as keywords (`seed=0, temperature=0`).
        """
        settings = _settings(GenerationSettings, settings, options)
        settings.validate()
        if not message.strip():
            raise ChatError("the message is empty; type an instruction or a question")
        check_utf8(message, "the message")
        spec = self.model.media_spec
        for name, value in (("audio", audio), ("image", image), ("video", video)):
            if value is not None:
                self.media[name] = load_media(name, value, spec)
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
        return ReplyStream(self, message, ids, prompts, settings, seed,
                           tuple(sorted(self.media)), dropped)

    def render(self, result: ChatResult, settings: MusicSettings) -> MusicResult | None:
        """Render music for `result` per `settings.music`; stores it in `result.music`.

        With music="always" and a reply that holds no [AUD] tokens, the tokens are appended
        after the reply and run through the LLM to get their hidden states.
        """
        settings.validate()
        if settings.music == "never":
            return None
        hidden = result.audio_hidden
        if hidden is None:
            if settings.music == "auto":
                return None
            model = self.model
            tok = model.tokenizer
            text_ids = tok(result.text, add_special_tokens=False).input_ids if result.text else []
            ids = [*result.prompt_ids, *text_ids, *model.llm.audio_token_ids]
            hidden = model.audio_token_hidden(ids, result.media_prompts)
            result.audio_hidden = hidden
            tokens = "".join(model.config.audio_tokens)
            result.raw_text = f"{result.text} {tokens}".strip()
            if self.history and self.history[-1].assistant == result.text:
                self.history[-1].assistant = result.raw_text
        result.music = render_music(self.model, hidden, result.text, settings)
        return result.music

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
        music_opts.pop("music", None)
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


def _settings(cls: type, settings: Any, options: dict[str, Any]) -> Any:
    """`settings` (or the defaults) with keyword `options` applied; unknown names are a
    ChatError that lists the valid ones."""
    unknown = set(options) - _FIELDS[cls]
    if unknown:
        raise ChatError(f"unknown option(s) {', '.join(sorted(unknown))}; use "
                        f"{', '.join(sorted(_FIELDS[cls]))}")
    base = settings if settings is not None else cls()
    return dataclasses.replace(base, **options) if options else base
