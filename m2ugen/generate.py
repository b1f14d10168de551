"""The token loop, as plain functions (STYLE.md §17): one forward step, sampling, the
generator of (token, hidden state) pairs, and the reply decoder that turns tokens into
streamed text and the [AUD] hidden states.

Generation stops at EOS, at a new "\\n###", or after the last [AUD] token. Once the model
emits [AUD0] the remaining [AUD1..] tokens are forced (they cannot appear elsewhere), and
the hidden states (last layer, before the final norm) at the positions that predict each
[AUDi] are returned: they are the input of the music path. Nothing here keeps state
between calls; a generation's injection, KV cache and capture list live in the call.

Three ways to run the forwards (`GenerationSettings`): no cache (the whole sequence every
step, as published), a dynamic KV cache, or a static one (preallocated, so every step has
the same shapes) whose one-token step `torch.compile` can take whole (`compile=True`).
Several prompts run as one batch, padded on the left (`generate_batch`), each row with
its own seed: the same replies as one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache, TopPLogitsWarper

from m2ugen.conversation import STOP_TEXT
from m2ugen.errors import ChatError, check_number, check_seed
from m2ugen.modules.llm import Injection

MIN_TEMPERATURE = 1e-4  # below it (but above 0, greedy) sampling is greedy in all but name
CACHES = ("dynamic", "static")
# a static cache holds prompt + new tokens rounded up to this: one compiled step serves
# every prompt length below the bucket (a new size recompiles)
STATIC_BUCKET = 256


@dataclass
class GenerationSettings:
    """Sampling settings; temperature 0 means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.6  # published demo settings
    top_p: float = 0.8
    seed: int | None = None
    use_cache: bool = True  # False: re-run the whole sequence every step (published)
    cache: str = "dynamic"  # KV cache kind: dynamic (grows) or static (preallocated)
    compile: bool = False  # torch.compile the one-token step (needs cache="static")

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
        if not isinstance(self.cache, str) or self.cache not in CACHES:
            raise ChatError(f"{name('cache')}={self.cache!r}: use one of {', '.join(CACHES)}")
        if self.compile and (self.cache != "static" or not self.use_cache):
            raise ChatError(f"{name('compile')} needs {name('cache')} static: the compiled "
                            "step keeps one shape, which only a static KV cache gives")


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
                 cache: DynamicCache | StaticCache | None,
                 **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of the new tokens (B, T) → (next-token logits (B, V) fp32, pre-norm
    hidden state (B, D) of the last position). Without a cache `step_input` is the whole
    sequence; `kwargs` (attention_mask, position_ids) go to the LLM."""
    if cache is not None:
        out = llm(step_input, injection=injection, past_key_values=cache, use_cache=True,
                  **kwargs)
    else:
        out = llm(step_input, injection=injection, use_cache=False, **kwargs)
    hidden = injection.capture.pop()[:, -1]
    injection.capture.clear()
    return out.logits[:, -1].float(), hidden


class _Forwards:
    """One generation's forwards for B prompts, padded on the left: `first()` runs the
    prompts, `next(tokens)` one new token per row. The KV cache (none, dynamic or static),
    the attention mask and positions of padded rows, and the injection live here, in the
    call. A batch of one unpadded prompt passes no mask or positions: exactly the plain
    forward."""

    def __init__(self, llm, seqs: list[list[int]], prompts: torch.Tensor,
                 settings: GenerationSettings, pad_id: int) -> None:
        self.llm = llm
        self.settings = settings
        device = prompts.device
        width = max(map(len, seqs))
        self.ids = torch.full((len(seqs), width), pad_id, device=device)  # (B, T)
        mask = torch.zeros_like(self.ids)
        for row, seq in enumerate(seqs):
            self.ids[row, width - len(seq):] = torch.tensor(seq, device=device)
            mask[row, width - len(seq):] = 1
        self.padded = bool((mask == 0).any())
        self.mask = mask
        self.positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        self.injection = Injection(prompts, capture=[])
        self.cache: DynamicCache | StaticCache | None = None
        self.static_mask: torch.Tensor | None = None
        self.step = forward_step
        if settings.use_cache and settings.cache == "static":
            size = math.ceil((width + settings.max_new_tokens) / STATIC_BUCKET) * STATIC_BUCKET
            self.cache = StaticCache(config=llm.hf_config, max_cache_len=size)
            # fixed shape (B, size): padding 0, the rest 1 (the causal mask hides the future)
            self.static_mask = torch.ones(len(seqs), size, dtype=mask.dtype, device=device)
            self.static_mask[:, :width] = mask
            if settings.compile:
                # the compiled code is cached by torch on forward_step's code object, so a
                # fresh wrapper per generation reuses it; CUDA graphs on a GPU
                mode = "reduce-overhead" if device.type == "cuda" else None
                self.step = torch.compile(forward_step, mode=mode, dynamic=False)
        elif settings.use_cache:
            self.cache = DynamicCache()

    def _kwargs(self, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.static_mask is not None:  # fixed shapes for the compiled step
            return {"attention_mask": self.static_mask, "position_ids": positions}
        if not self.padded:
            return {}
        return {"attention_mask": self.mask, "position_ids": positions}

    def first(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the prompts: next-token logits (B, V) and pre-norm hidden states (B, D)."""
        return forward_step(self.llm, self.ids, self.injection, self.cache,
                            **self._kwargs(self.positions))

    def next(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append one token per row (B,) and run: logits (B, V), hidden (B, D)."""
        tokens = tokens[:, None]  # (B, 1)
        position = self.positions[:, -1] + 1  # (B,)
        self.mask = torch.cat([self.mask, torch.ones_like(tokens)], dim=1)
        self.positions = torch.cat([self.positions, position[:, None]], dim=1)
        if self.cache is None:  # the published loop: the whole sequence again
            self.ids = torch.cat([self.ids, tokens], dim=1)
            return forward_step(self.llm, self.ids, self.injection, None,
                                **self._kwargs(self.positions))
        if self.step is not forward_step and tokens.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        # (B, 1) views of fresh (B,) tensors: the same strides every step (a slice of the
        # growing positions would change them, and the compiled step would recompile)
        logits, hidden = self.step(self.llm, tokens, self.injection, self.cache,
                                   **self._kwargs(position[:, None]))
        if self.step is not forward_step:  # compiled outputs may live in reused buffers
            logits, hidden = logits.clone(), hidden.clone()
        return logits, hidden


def _choose(logits: torch.Tensor, forced: list[int], settings: GenerationSettings,
            gen: torch.Generator, audio_ids: list[int]) -> int:
    """The next token of one row from its logits (1, V); `forced` holds the [AUD1..]
    still owed after [AUD0] (consumed here)."""
    if forced:
        return forced.pop(0)
    logits[:, audio_ids[1:]] = float("-inf")  # [AUD1..] only follow [AUD0]
    token = int(sample(logits, settings, gen)[0])
    if token == audio_ids[0]:
        forced.extend(audio_ids[1:])
    return token


def generate_tokens(llm, ids: list[int], prompts: torch.Tensor, settings: GenerationSettings,
                    seed: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (token id, pre-norm hidden state (D,) that predicted it), one per step.

    With `use_cache` the KV cache makes each step one token; without it the whole
    sequence is re-run every step (the published behaviour; kept for comparison).
    """
    gen = torch.Generator(device=prompts.device).manual_seed(seed)
    audio_ids = llm.audio_token_ids
    # this generation's own injection state (prompts, per-layer term cache, capture list):
    # nothing is stored on the shared model, so several threads can generate at once
    forwards = _Forwards(llm, [ids], prompts, settings, pad_id=0)
    forced: list[int] = []
    logits, hidden = forwards.first()
    for step in range(settings.max_new_tokens):
        token = _choose(logits, forced, settings, gen, audio_ids)
        yield token, hidden[0]
        if step + 1 < settings.max_new_tokens:
            logits, hidden = forwards.next(torch.tensor([token], device=prompts.device))


def generate_batch(llm, tok, seqs: list[list[int]], prompts: torch.Tensor,
                   settings: GenerationSettings, seeds: list[int]) -> list[DecodedReply]:
    """Replies to several prompts at once: `seqs` token ids (left-padded into one batch),
    `prompts` (3Q, B, D), one seed per row. Each row samples with its own generator and
    stops where `decode_reply` would, so each reply is the one `generate_tokens` +
    `decode_reply` give it alone (up to float rounding of the padded batch)."""
    if not (len(seqs) == prompts.shape[1] == len(seeds)):
        raise ValueError(f"{len(seqs)} prompts, {prompts.shape[1]} prompt vectors, "
                         f"{len(seeds)} seeds: one each per row")
    device = prompts.device
    audio_ids = llm.audio_token_ids
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    decoders = [ReplyDecoder(tok, audio_ids) for _ in seqs]
    forced: list[list[int]] = [[] for _ in seqs]
    pad = tok.eos_token_id  # what a finished row is fed: its outputs are never read
    forwards = _Forwards(llm, seqs, prompts, settings, pad_id=pad)
    logits, hidden = forwards.first()
    for step in range(settings.max_new_tokens):
        tokens = []
        for row, decoder in enumerate(decoders):
            if decoder.done:
                tokens.append(pad)
                continue
            token = _choose(logits[row:row + 1], forced[row], settings, gens[row], audio_ids)
            decoder.push(token, hidden[row])
            tokens.append(token)
        if all(d.done for d in decoders) or step + 1 == settings.max_new_tokens:
            break
        logits, hidden = forwards.next(torch.tensor(tokens, device=device))
    return [d.finish()[1] for d in decoders]


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


class ReplyDecoder:
    """`decode_reply` one token at a time: `push` each generated token (it returns the
    text that became final), until `done`; then `finish` for the last text and the reply.

    Incremental detokenisation over a sliding window (prefix_offset..): text is taken only
    once it no longer ends in an incomplete UTF-8 byte sequence, and a tail that could
    begin the stop text is held back, so what has been returned never changes afterwards
    and the pieces concatenate to the final text.
    """

    def __init__(self, tok, audio_ids: list[int]) -> None:
        self.tok = tok
        self.audio_ids = audio_ids
        self.text_ids: list[int] = []
        self.all_ids: list[int] = []
        self.hidden_at: dict[int, torch.Tensor] = {}
        self.text, self.shown, self.prefix_offset, self.read_offset = "", 0, 0, 0
        self.stopped = False  # the stop text ended it
        self.done = False

    def push(self, token: int, hidden: torch.Tensor) -> str:
        """Take the next token and the hidden state (D,) that predicted it."""
        tok, audio_ids = self.tok, self.audio_ids
        if token == tok.eos_token_id:
            self.done = True
            return ""
        self.all_ids.append(token)
        if token in audio_ids:
            self.hidden_at[audio_ids.index(token)] = hidden
            self.done = token == audio_ids[-1]
            return ""
        self.text_ids.append(token)
        ids, start, read = self.text_ids, self.prefix_offset, self.read_offset
        before = tok.decode(ids[start:read], skip_special_tokens=True)
        after = tok.decode(ids[start:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self.prefix_offset, self.read_offset = read, len(ids)
        if STOP_TEXT in self.text:
            self.text = self.text[:self.text.index(STOP_TEXT)]
            self.stopped = self.done = True
            return ""
        stable = len(self.text) - _partial_stop(self.text)
        if stable > self.shown:
            piece, self.shown = self.text[self.shown:stable], stable
            return piece
        return ""

    def finish(self) -> tuple[str, DecodedReply]:
        """(the text not returned yet, the DecodedReply)."""
        text = self.text
        if not self.stopped:
            text = (text + _flush(self.tok, self.text_ids, self.prefix_offset,
                                  self.read_offset)).split(STOP_TEXT)[0]
        text = text.rstrip()
        tail = text[self.shown:] if len(text) > self.shown else ""
        audio_hidden = None
        if len(self.hidden_at) == len(self.audio_ids):
            audio_hidden = torch.stack([self.hidden_at[i] for i in range(len(self.audio_ids))])
        return tail, DecodedReply(text=text.strip(), token_ids=self.all_ids,
                                  audio_hidden=audio_hidden)


def decode_reply(tok, tokens: Iterator[tuple[int, torch.Tensor]],
                 audio_ids: list[int]) -> Generator[str, None, DecodedReply]:
    """Yield the reply's text pieces as `tokens` come; return the DecodedReply
    (`ReplyDecoder` says how the text is made final)."""
    decoder = ReplyDecoder(tok, audio_ids)
    for token, hidden in tokens:
        piece = decoder.push(token, hidden)
        if piece:
            yield piece
        if decoder.done:
            break
    tail, reply = decoder.finish()
    if tail:
        yield tail
    return reply
