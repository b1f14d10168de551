"""Music rendering for a chat reply: [AUD] hidden states → projector → decoder → waveform.

`condition="embedding"` (default) conditions the decoder on the projector output ÷ 10, so
the music depends on everything the LLM understood (image, video, input music, the
conversation). `condition="text"` prompts the decoder with the reply text instead — the
published behaviour (ORIGINAL_M2UGEN.md §5.2), kept for comparison.

Best of N: with `rerank="clap"` the `num_candidates` waveforms (one batched render) are
scored by a judge against the request (or the reply text) and returned best first; the
judge is passed in (`eval/judge.py` provides the CLAP one), as this module sits below the
evaluation.

Edits that keep the song: with `source="hear"` (default) and music in the request (the
newest attachment of the conversation), the decoder also hears that music, resampled to
its rate (`decoders.EDIT_STRENGTH`: MusicGen continues its start, AudioLDM2 denoises its
noised latent); `source="ignore"` is the published text-only edit, a new piece.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from m2ugen.errors import ChatError, check_number, check_seed
from m2ugen.media import resample_audio
from m2ugen.modules.decoders import EDIT_STRENGTH, SCHEDULERS, TARGET_SCALE

MUSIC_MODES = ("auto", "always", "never")
CONDITIONS = ("embedding", "text")
SOURCE_MODES = ("hear", "ignore")  # does the decoder hear the request's music (an edit)?
MAX_SECONDS = 300.0
MAX_GUIDANCE = 100.0  # published 3.5; far beyond ~20 the decoders only add artefacts
RERANKERS = ("none", "clap")  # the judges best-of-N can use (`Judge.name`)
RERANK_TEXTS = ("request", "reply")  # what the judge compares the music with


class Judge(Protocol):
    """A joint audio-text model that scores rendered candidates against a text."""

    name: str  # the `rerank` value it serves
    ref: str  # its hub id or directory

    def score(self, text: str, waveforms: np.ndarray, sample_rate: int) -> np.ndarray:
        """(candidates,) scores, higher = closer to `text`; waveforms as MusicResult's."""
        ...


@dataclass
class MusicSettings:
    """When and how to render music for a reply."""

    music: str = "auto"  # auto: when the reply holds the [AUD] tokens; always; never
    condition: str = "embedding"
    seconds: float = 10.0
    guidance: float = 3.5  # published MusicGen guidance; AudioLDM2's pipeline default too
    steps: int | None = None  # AudioLDM2 denoising steps (None: 20 dpm++, 200 ddim)
    scheduler: str = "dpm++"  # AudioLDM2 sampler: dpm++ or ddim (published); MusicGen: none
    seed: int | None = None
    num_candidates: int = 1
    rerank: str = "none"  # none, or clap: order the candidates by a judge's score
    rerank_against: str = "request"  # the user's message, or the reply text
    source: str = "hear"  # hear: an edit keeps the song (module docstring); ignore: published
    edit_strength: float = EDIT_STRENGTH  # how much of the piece is new, (0, 1]

    def validate(self, name: Callable[[str], str] = str) -> None:
        """Raise ChatError on a value no music can be made with (NaN, ±inf, out of range,
        not a number); `name` as in `GenerationSettings.validate`."""
        if not isinstance(self.music, str) or self.music not in MUSIC_MODES:
            raise ChatError(f"{name('music')}={self.music!r}: use one of "
                            f"{', '.join(MUSIC_MODES)}")
        if not isinstance(self.condition, str) or self.condition not in CONDITIONS:
            raise ChatError(f"{name('condition')}={self.condition!r}: use one of "
                            f"{', '.join(CONDITIONS)}")
        if not isinstance(self.source, str) or self.source not in SOURCE_MODES:
            raise ChatError(f"{name('source')}={self.source!r}: use one of "
                            f"{', '.join(SOURCE_MODES)}")
        self.edit_strength = check_number(self.edit_strength, name("edit_strength"),
                                          above=0.0, maximum=1.0, error=ChatError)
        if not isinstance(self.scheduler, str) or self.scheduler not in SCHEDULERS:
            raise ChatError(f"{name('scheduler')}={self.scheduler!r}: use one of "
                            f"{', '.join(SCHEDULERS)}")
        self.seconds = check_number(self.seconds, name("seconds"), above=0.0,
                                    maximum=MAX_SECONDS, error=ChatError)
        self.guidance = check_number(self.guidance, name("guidance"), minimum=0.0,
                                     maximum=MAX_GUIDANCE, error=ChatError)
        if self.steps is not None:  # diffusion schedules have 1000 training timesteps
            self.steps = check_number(self.steps, name("steps"), integer=True, minimum=1,
                                      maximum=1000, error=ChatError)
        if self.seed is not None:
            self.seed = check_seed(self.seed, name("seed"), error=ChatError)
        self.num_candidates = check_number(self.num_candidates, name("num_candidates"),
                                           integer=True, minimum=1, maximum=16,
                                           error=ChatError)
        if not isinstance(self.rerank, str) or self.rerank not in RERANKERS:
            raise ChatError(f"{name('rerank')}={self.rerank!r}: use one of "
                            f"{', '.join(RERANKERS)}")
        if not isinstance(self.rerank_against, str) or self.rerank_against not in RERANK_TEXTS:
            raise ChatError(f"{name('rerank_against')}={self.rerank_against!r}: use one of "
                            f"{', '.join(RERANK_TEXTS)}")
        if self.rerank != "none" and self.num_candidates < 2:
            raise ChatError(f"{name('rerank')}={self.rerank} ranks several candidates, and "
                            f"{name('num_candidates')} is {self.num_candidates}; raise "
                            f"{name('num_candidates')} to 2 or more, or use "
                            f"{name('rerank')}=none")


@dataclass
class MusicResult:
    """Rendered music: `waveforms` (candidates, samples) float32 at `sample_rate`, or
    (candidates, samples, 2) from a stereo decoder — each candidate as soundfile and
    `save_audio` take it, (samples,) or (samples, channels).

    Reranked (`rerank` not none), the candidates are best first: `scores[k]` is the judge's
    score of `waveforms[k]` (descending) and `ranking[k]` the render index it had.
    """

    waveforms: np.ndarray
    sample_rate: int
    condition: str
    seconds: float
    seed: int
    conditioning: torch.Tensor | None = None  # (1, N, W) what the decoder got, embedding mode
    scores: np.ndarray | None = None  # (candidates,) float32, best first; None: not reranked
    ranking: tuple[int, ...] | None = None  # render index of each candidate, best first
    judge: str | None = None  # the judge's hub id or directory
    judged_text: str | None = None  # the text the candidates were scored against
    source_heard: bool = False  # the decoder heard the request's music (an edit)
    edit_strength: float | None = None  # with source_heard

    @property
    def waveform(self) -> np.ndarray:
        """The first candidate (samples,), stereo (samples, 2)."""
        return self.waveforms[0]

    @property
    def channels(self) -> int:
        """1 (mono) or 2 (stereo)."""
        return 1 if self.waveforms.ndim == 2 else int(self.waveforms.shape[-1])


def render_music(model, audio_hidden: torch.Tensor, text: str,
                 settings: MusicSettings, judge: Judge | None = None,
                 request: str = "", source: tuple[np.ndarray, int] | None = None
                 ) -> MusicResult:
    """Render `settings.num_candidates` waveforms for one reply (best first when reranked).

    Args:
        model: the M2UGen model.
        audio_hidden: (8, D) pre-norm hidden states at the positions predicting [AUD0..7].
        text: the reply text (prompts the decoder when condition="text").
        judge: scores the candidates when `settings.rerank` is not none.
        request: the user's message (what the judge hears against, rerank_against="request").
        source: (mono waveform, its rate): the request's music, which the decoder hears
            when settings.source == "hear" (an edit that keeps the song).
    """
    settings.validate()
    judged = _judged_text(settings, judge, text, request)  # before the slow render
    seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**31)
    decoder = model.load_decoder()  # loaded once, when music is first asked for
    n = settings.num_candidates
    sources = None
    if source is not None and settings.source == "hear":
        wave, rate = source
        sources = [resample_audio(np.asarray(wave, dtype=np.float32), int(rate),
                                  decoder.sample_rate)] * n
    edit = {"sources": sources, "edit_strength": settings.edit_strength}
    conditioning = None
    if settings.condition == "embedding":
        with torch.no_grad():
            conditioning = model.project(audio_hidden[None]) / TARGET_SCALE  # (1, N, W)
        waves = decoder.generate(conditioning.expand(n, -1, -1), settings.seconds,
                                 settings.guidance, seed, settings.steps, settings.scheduler,
                                 **edit)
    else:
        if not text.strip():
            raise ChatError("condition=text needs reply text, and the reply is empty; "
                            "use condition=embedding")
        waves = decoder.generate_from_text([text] * n, settings.seconds, settings.guidance,
                                           seed, settings.steps, settings.scheduler, **edit)
    result = MusicResult(waveforms=waves, sample_rate=decoder.sample_rate,
                         condition=settings.condition, seconds=settings.seconds, seed=seed,
                         conditioning=conditioning, source_heard=sources is not None,
                         edit_strength=settings.edit_strength if sources is not None else None)
    if judged is None:
        return result
    assert judge is not None  # _judged_text checked it
    return rank_candidates(result, judge, judged)


def _judged_text(settings: MusicSettings, judge: Judge | None, reply: str,
                 request: str) -> str | None:
    """The text the candidates will be scored against (None: no reranking); a missing or
    mismatched judge or an empty text is a ChatError."""
    if settings.rerank == "none":
        return None
    if judge is None or judge.name != settings.rerank:
        have = "none" if judge is None else f"a {judge.name} judge"
        raise ChatError(f"rerank={settings.rerank} needs a {settings.rerank} judge and the "
                        f"session has {have}; pass one (ChatSession(model, judge="
                        "ClapJudge.load(ID)), `m2ugen chat --judge ID`) or use rerank=none")
    text = request if settings.rerank_against == "request" else reply
    if not text.strip():
        other = "reply" if settings.rerank_against == "request" else "request"
        raise ChatError(f"rerank_against={settings.rerank_against}: the "
                        f"{settings.rerank_against} text is empty; use rerank_against={other}")
    return text


def rank_candidates(result: MusicResult, judge: Judge, text: str) -> MusicResult:
    """`result` with its candidates ordered by `judge`'s score against `text`, best first
    (ties keep the render order); the scores, the ranking and the judge recorded."""
    scores = np.asarray(judge.score(text, result.waveforms, result.sample_rate),
                        dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    return dataclasses.replace(result, waveforms=result.waveforms[order], scores=scores[order],
                               ranking=tuple(int(i) for i in order), judge=judge.ref,
                               judged_text=text)
