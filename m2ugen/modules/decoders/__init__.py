"""Music decoders behind one small interface (MusicGen, AudioLDM2).

A decoder turns conditioning states — the output projector's, divided by 10 — into a
waveform, and gives the stage-2 regression target for captions: 10 × its own
conditioning of the caption (ORIGINAL_M2UGEN.md §4).

Padding: a caption fills the first n of the 128 text-encoder positions; the decoders hear
only those (MusicGen multiplies padded states by 0 and masks them out of cross-attention;
AudioLDM2's UNet masks them). The projector is trained to output zero past the caption
(model.py, the masked target), and `conditioning_lengths` reads n back from its output, so
a decoder hears the projector's states the way it hears a caption.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from m2ugen.errors import ConfigError, loading

TARGET_SCALE = 10.0  # published: projector regresses 10 × the decoder's conditioning

# The conditioning layouts (ORIGINAL_M2UGEN.md §4), stated once. MusicGen: the projector
# makes 128 T5 text-encoder states (captions padded / truncated to 128 tokens for the
# target). AudioLDM2: ONE token holding 128 T5 states then 8 GPT-2 states, flattened.
MUSICGEN_TOKENS = 128
AUDIOLDM2_T5_TOKENS = 128  # whatever the T5 tokenizer's own maximum
AUDIOLDM2_GPT2_TOKENS = 8  # the pipeline's language model generates 8 states

# AudioLDM2's samplers (MusicGen has none): DPM-Solver++ at a few steps is the default, the
# published 200-step DDIM one flag away; each with its default number of steps
SCHEDULERS = ("dpm++", "ddim")
SCHEDULER_STEPS = {"dpm++": 20, "ddim": 200}

# Edits that keep the song: the decoder also hears the source music. `edit_strength` s in
# (0, 1] is how much of the piece is new: MusicGen continues the source's first (1 - s) of
# the length (its audio prompt); AudioLDM2 noises the source's latent to the fraction s of
# its schedule and denoises it under the new conditioning (SDEdit); s = 1 ignores it.
EDIT_STRENGTH = 0.6

# A projector state is padding when its norm is below this fraction of the row's largest:
# trained against zeros there, its padding is ~0 while a caption's states (a text encoder's
# normalised output) are all of one order. A projector that never learned the zeros (the
# published checkpoints, which regressed the encoder's pad states; an untrained one) keeps
# all 128 positions, as before.
PAD_FRACTION = 0.25


def musicgen_cond_shape(t5_width: int) -> tuple[int, int]:
    """(N, W) the projector makes for MusicGen: (128, T5 width)."""
    return MUSICGEN_TOKENS, int(t5_width)


def audioldm2_parts(t5_width: int, gpt2_width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((128, T5 width), (8, GPT-2 width)): the two states AudioLDM2 is conditioned on."""
    return (AUDIOLDM2_T5_TOKENS, int(t5_width)), (AUDIOLDM2_GPT2_TOKENS, int(gpt2_width))


def audioldm2_cond_shape(t5_width: int, gpt2_width: int) -> tuple[int, int]:
    """(1, 128·T5 width + 8·GPT-2 width): both parts flattened into one token."""
    (lt, wt), (lg, wg) = audioldm2_parts(t5_width, gpt2_width)
    return 1, lt * wt + lg * wg


def cond_shape_from_configs(kind: str, read: Callable[[str], dict[str, Any]]) -> tuple[int, int]:
    """The (N, W) conditioning of a decoder from its config files, without loading weights;
    `read(subfolder)` returns a config.json as a dict ("" = the top one)."""
    if kind == "musicgen":
        return musicgen_cond_shape(read("")["text_encoder"]["d_model"])
    if kind == "audioldm2":
        return audioldm2_cond_shape(read("text_encoder_2")["d_model"],
                                    read("language_model")["n_embd"])
    raise ConfigError(f"decoder kind {kind!r} is unknown; use musicgen or audioldm2")


def conditioning_lengths(states: torch.Tensor) -> torch.Tensor:
    """(B,) how many leading positions of (B, N, W) text states are the caption: up to the
    last position whose norm reaches PAD_FRACTION of the row's largest (at least 1)."""
    norms = states.float().norm(dim=-1)  # (B, N)
    keep = norms >= PAD_FRACTION * norms.amax(dim=1, keepdim=True).clamp(min=1e-12)
    positions = torch.arange(1, norms.shape[1] + 1, device=norms.device)
    return (keep * positions).amax(dim=1).clamp(min=1)


def length_mask(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) long mask: 1 on each row's first `lengths[b]` positions."""
    return (torch.arange(n, device=lengths.device)[None] < lengths[:, None]).long()


class MusicDecoder(ABC):
    """What M2UGen needs from a music decoder."""

    kind: str

    @property
    @abstractmethod
    def sample_rate(self) -> int:
        """Output waveform rate (Hz)."""

    @property
    @abstractmethod
    def cond_shape(self) -> tuple[int, int]:
        """(N tokens, width) of the conditioning the projector must produce."""

    @abstractmethod
    def target(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(10 × conditioning (B, N, W), mask (B, N, W) — False at padded positions)."""

    def text_states(self, conditioning: torch.Tensor) -> torch.Tensor:
        """(B, N', W') the part of (B, N, W) conditioning that holds a caption's text
        states, padded past the caption (`conditioning_lengths` reads its length)."""
        return conditioning

    def lengths(self, conditioning: torch.Tensor) -> torch.Tensor:
        """(B,) the caption positions the decoder hears in this conditioning."""
        return conditioning_lengths(self.text_states(conditioning))

    @abstractmethod
    def generate(self, conditioning: torch.Tensor, seconds: float, guidance: float,
                 seed: int, steps: int | None = None, scheduler: str | None = None,
                 sources: list[np.ndarray] | None = None,
                 edit_strength: float = EDIT_STRENGTH) -> np.ndarray:
        """Conditioning (B, N, W) (already ÷ 10) → waveforms (B, samples) float32, or
        (B, samples, 2) from a stereo decoder (MusicGen with `audio_channels=2`). The
        decoder hears the first `lengths(conditioning)` text positions of each row.

        `scheduler` (one of SCHEDULERS; None: the first) and `steps` (None: its
        SCHEDULER_STEPS) choose a diffusion decoder's sampler; MusicGen ignores both.
        `sources`: B mono waveforms at `sample_rate` the decoder hears (an edit that keeps
        the song, `EDIT_STRENGTH`); None: it hears only the conditioning."""

    @abstractmethod
    def generate_from_text(self, texts: list[str], seconds: float, guidance: float,
                           seed: int, steps: int | None = None,
                           scheduler: str | None = None,
                           sources: list[np.ndarray] | None = None,
                           edit_strength: float = EDIT_STRENGTH) -> np.ndarray:
        """The published behaviour: prompt the decoder with text → waveforms (B, samples)."""

    @abstractmethod
    def reconstruct(self, sources: list[np.ndarray], seconds: float) -> np.ndarray:
        """What the decoder hears of `sources`: each through its own autoencoder (MusicGen:
        EnCodec codes; AudioLDM2: mel → VAE latent) and back → (B, samples). An edit that
        keeps the song starts from this, so it is the fair reference for how much is kept."""

    def fit_source(self, source: np.ndarray, seconds: float) -> np.ndarray:
        """A source waveform cut or zero-padded to exactly `seconds` (samples,)."""
        return self.fit_length(np.asarray(source, dtype=np.float32).reshape(1, -1), seconds)[0]

    def fit_length(self, audio: np.ndarray, seconds: float) -> np.ndarray:
        """Cut or zero-pad (B, samples) to exactly `seconds`."""
        n = int(round(seconds * self.sample_rate))
        audio = audio[:, :n]
        if audio.shape[1] < n:
            audio = np.pad(audio, ((0, 0), (0, n - audio.shape[1])))
        return audio.astype(np.float32)


def load_decoder(kind: str, path: str, device: torch.device, dtype: torch.dtype) -> MusicDecoder:
    """Load the decoder named by the config's `decoder` kind and `decoder_path`."""
    if kind == "musicgen":
        from transformers import AutoConfig

        from m2ugen.modules.decoders.musicgen import MusicGenDecoder
        from m2ugen.modules.decoders.musicgen_melody import MusicGenMelodyDecoder

        with loading("music decoder (MusicGen)", path):
            # MusicGen-Melody is the same kind with another architecture: told by its config
            melody = AutoConfig.from_pretrained(path).model_type == "musicgen_melody"
            cls = MusicGenMelodyDecoder if melody else MusicGenDecoder
            return cls.from_pretrained(path, device, dtype)
    if kind == "audioldm2":
        from m2ugen.modules.decoders.audioldm2 import AudioLDM2Decoder

        with loading("music decoder (AudioLDM2)", path):
            return AudioLDM2Decoder.from_pretrained(path, device, dtype)
    raise ConfigError(f"decoder kind {kind!r} is unknown; use musicgen or audioldm2")
