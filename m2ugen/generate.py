"""The token loop, as plain functions (STYLE.md §17): one forward step, sampling, the
generator of (token, hidden state) pairs, and the reply decoder that turns tokens into
streamed text and the [AUD] hidden states.

Generation stops at EOS, at a new "\\n###", or after the last [AUD] token. Once the model
emits [AUD0] the remaining [AUD1..] tokens are forced (they cannot appear elsewhere), and
the hidden states (last layer, before the final norm) at the positions that predict each
[AUDi] are returned: they are the input of the music path. Nothing here keeps state
between calls; a generation's injection, KV cache and capture list live in the call.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache, TopPLogitsWarper

from m2ugen.conversation import STOP_TEXT
from m2ugen.errors import ChatError, check_number, check_seed
from m2ugen.modules.llm import Injection

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
        field into the option as the user wrote it (`cli.flag_name` for the CLI, the
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


def sample(logits: torch.Tensor, settings: GenerationSettings,
           gen: torch.Generator) -> torch.Tensor:
    """(1, V) logits → (1,) next token: argmax at temperature 0, else nucleus sampling."""
    if settings.temperature == 0:
        return logits.argmax(-1)
    scores = logits / settings.temperature
    if settings.top_p < 1:
        scores = TopPLogitsWarper(settings.top_p)(None, scores)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


@torch.no_grad()
def forward_step(llm, step_input: torch.Tensor, injection: Injection,
                 cache: DynamicCache | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of the new tokens (1, T) → (next-token logits (1, V) fp32, pre-norm
    hidden state (D,) of the last position). Without a cache `step_input` is the whole
    sequence."""
    if cache is not None:
        out = llm(step_input, injection=injection, past_key_values=cache, use_cache=True)
    else:
        out = llm(step_input, injection=injection, use_cache=False)
    hidden = injection.capture[-1][0, -1]
    injection.capture.clear()
    return out.logits[:, -1].float(), hidden


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
        logits, hidden = forward_step(llm, step_input if cache is not None else seq,
                                      injection, cache)
        if forced:
            token = forced.pop(0)
        else:
            logits[:, audio_ids[1:]] = float("-inf")  # [AUD1..] only follow [AUD0]
            token = int(sample(logits, settings, gen)[0])
            if token == audio_ids[0]:
                forced = list(audio_ids[1:])
        yield token, hidden
        step_input = torch.tensor([[token]], device=device)
        seq = torch.cat([seq, step_input], dim=1)


@dataclass
class DecodedReply:
    """What `decode_reply` returns once the tokens end."""

    text: str  # stripped, stop text removed
    token_ids: list[int]  # every generated token but EOS ([AUD] tokens included)
    audio_hidden: torch.Tensor | None  # (8, D) when all [AUD] tokens were generated


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


def decode_reply(tok, tokens: Iterator[tuple[int, torch.Tensor]],
                 audio_ids: list[int]) -> Generator[str, None, DecodedReply]:
    """Yield the reply's text pieces as `tokens` come; return the DecodedReply.

    Incremental detokenisation over a sliding window (prefix_offset..): text is taken only
    once it no longer ends in an incomplete UTF-8 byte sequence, and a tail that could
    begin the stop text is held back, so what has been yielded never changes afterwards
    and the pieces concatenate to the final text.
    """
    text_ids: list[int] = []
    all_ids: list[int] = []
    hidden_at: dict[int, torch.Tensor] = {}
    text, shown, prefix_offset, read_offset = "", 0, 0, 0
    stopped = False
    for token, hidden in tokens:
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
    audio_hidden = None
    if len(hidden_at) == len(audio_ids):
        audio_hidden = torch.stack([hidden_at[i] for i in range(len(audio_ids))])
    return DecodedReply(text=text.strip(), token_ids=all_ids, audio_hidden=audio_hidden)
