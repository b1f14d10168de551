"""Music rendering for a chat reply: [AUD] hidden states → projector → decoder → waveform.

`condition="embedding"` (default) conditions the decoder on the projector output ÷ 10, so
the music depends on everything the LLM understood (image, video, input music, the
conversation). `condition="text"` prompts the decoder with the reply text instead — the
published behaviour (ORIGINAL_M2UGEN.md §5.2), kept for comparison.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from m2ugen.errors import ChatError, check_number, check_seed
from m2ugen.modules.decoders import SCHEDULERS, TARGET_SCALE

MUSIC_MODES = ("auto", "always", "never")
CONDITIONS = ("embedding", "text")
MAX_SECONDS = 300.0
MAX_GUIDANCE = 100.0  # published 3.5; far beyond ~20 the decoders only add artefacts


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

    def validate(self, name: Callable[[str], str] = str) -> None:
        """Raise ChatError on a value no music can be made with (NaN, ±inf, out of range,
        not a number); `name` as in `GenerationSettings.validate`."""
        if not isinstance(self.music, str) or self.music not in MUSIC_MODES:
            raise ChatError(f"{name('music')}={self.music!r}: use one of "
                            f"{', '.join(MUSIC_MODES)}")
        if not isinstance(self.condition, str) or self.condition not in CONDITIONS:
            raise ChatError(f"{name('condition')}={self.condition!r}: use one of "
                            f"{', '.join(CONDITIONS)}")
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


@dataclass
class MusicResult:
    """Rendered music: `waveforms` (candidates, samples) float32 at `sample_rate`."""

    waveforms: np.ndarray
    sample_rate: int
    condition: str
    seconds: float
    seed: int
    conditioning: torch.Tensor | None = None  # (1, N, W) what the decoder got, embedding mode

    @property
    def waveform(self) -> np.ndarray:
        """The first candidate (samples,)."""
        return self.waveforms[0]


def render_music(model, audio_hidden: torch.Tensor, text: str,
                 settings: MusicSettings) -> MusicResult:
    """Render `settings.num_candidates` waveforms for one reply.

    Args:
        model: the M2UGen model.
        audio_hidden: (8, D) pre-norm hidden states at the positions predicting [AUD0..7].
        text: the reply text (prompts the decoder when condition="text").
    """
    settings.validate()
    seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**31)
    decoder = model.load_decoder()  # loaded once, when music is first asked for
    n = settings.num_candidates
    conditioning = None
    if settings.condition == "embedding":
        with torch.no_grad():
            conditioning = model.project(audio_hidden[None]) / TARGET_SCALE  # (1, N, W)
        waves = decoder.generate(conditioning.expand(n, -1, -1), settings.seconds,
                                 settings.guidance, seed, settings.steps, settings.scheduler)
    else:
        if not text.strip():
            raise ChatError("condition=text needs reply text, and the reply is empty; "
                            "use condition=embedding")
        waves = decoder.generate_from_text([text] * n, settings.seconds, settings.guidance,
                                           seed, settings.steps, settings.scheduler)
    return MusicResult(waveforms=waves, sample_rate=decoder.sample_rate,
                       condition=settings.condition, seconds=settings.seconds, seed=seed,
                       conditioning=conditioning)
