"""MusicGen-Melody (transformers) as an M2UGen decoder: projector states plus the chroma of
the source music, so an edit keeps the song's melody and harmony.

MusicGen-Melody has no cross-attention: its decoder reads a prefix of conditioning states,
[chroma states ; text states], before the codes. transformers builds that prefix from a
text prompt and `input_features` (the chroma); with external conditioning we build the
same prefix from its own parts — the projector states through `enc_to_dec_proj`, the
chroma through `audio_enc_to_dec_proj`, repeated or cut to `chroma_length` — and pass it
as `encoder_hidden_states`, with the unconditional half as transformers makes it (zero text
states, the "no melody" chroma: a one-hot on the first pitch class).

The chroma is the feature extractor's (audiocraft's): a power spectrogram (Hann window of
`n_fft`, `hop_length`, centred), librosa's chroma filter bank, and per frame a one-hot on
the strongest pitch class. transformers' `MusicgenMelodyFeatureExtractor` computes it with
torchaudio, which this project does not install (STACK.md), so it is computed here with
transformers' own numpy `audio_utils`, from the folder's `preprocessor_config.json`.

Without a source (text, image or video to music) the chroma is the "no melody" one, exactly
what transformers does for a text-only prompt. `edit_strength` 1 ignores the source; any
other value conditions the whole piece on the source's chroma (the melody model has no
audio prompt: the edit keeps the melody, not the recording). Long pieces reuse the first
window's chroma in every window.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    EncodecFeatureExtractor,
    MusicgenMelodyForConditionalGeneration,
)
from transformers.audio_utils import chroma_filter_bank, spectrogram, window_function

from m2ugen.errors import ConfigError
from m2ugen.modules.decoders.musicgen import MusicGenDecoder


@dataclass(frozen=True)
class ChromaSpec:
    """The melody feature extractor's settings (its preprocessor_config.json)."""

    sampling_rate: int = 32000
    n_fft: int = 16384
    hop_length: int = 4096
    num_chroma: int = 12

    @classmethod
    def read(cls, path: str) -> ChromaSpec:
        """From a local folder's preprocessor_config.json, or a hub repo's (cached)."""
        local = Path(path) / "preprocessor_config.json"
        if local.is_file():
            data = json.loads(local.read_text())
        else:
            from huggingface_hub import hf_hub_download

            data = json.loads(Path(hf_hub_download(path, "preprocessor_config.json"))
                              .read_text())
        known = {k: int(data[k]) for k in ("sampling_rate", "n_fft", "hop_length", "num_chroma")
                 if k in data}
        return cls(**known)


def melody_chroma(wave: np.ndarray, spec: ChromaSpec) -> np.ndarray:
    """(frames, num_chroma) one-hot chroma of a mono waveform at `spec.sampling_rate`."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.shape[0] < spec.n_fft:  # as the extractor does: centre it in a zero frame
        pad = spec.n_fft - wave.shape[0]
        wave = np.pad(wave, (pad // 2, pad - pad // 2))
    power = spectrogram(wave, window_function(spec.n_fft, "hann", periodic=True),
                        frame_length=spec.n_fft, hop_length=spec.hop_length,
                        fft_length=spec.n_fft, power=2.0, center=True, pad_mode="reflect")
    bank = chroma_filter_bank(sampling_rate=spec.sampling_rate, num_frequency_bins=spec.n_fft,
                              tuning=0, num_chroma=spec.num_chroma)
    chroma = bank @ power  # (num_chroma, frames)
    onehot = np.zeros((chroma.shape[1], spec.num_chroma), dtype=np.float32)
    onehot[np.arange(chroma.shape[1]), chroma.argmax(axis=0)] = 1.0
    return onehot


class MusicGenMelodyDecoder(MusicGenDecoder):
    """MusicGen-Melody: the MusicGen interface, plus melody conditioning on `sources`."""

    melody = True

    def __init__(self, model: MusicgenMelodyForConditionalGeneration, tokenizer,
                 chroma: ChromaSpec) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.chroma = chroma
        enc = model.config.audio_encoder
        self.audio_features = EncodecFeatureExtractor(
            feature_size=int(enc.audio_channels), sampling_rate=int(enc.sampling_rate))
        if chroma.sampling_rate != self.sample_rate:
            raise ConfigError(f"MusicGen-Melody: its chroma is computed at {chroma.sampling_rate}"
                              f" Hz and its audio at {self.sample_rate} Hz; fix the folder's "
                              "preprocessor_config.json")

    @classmethod
    def from_pretrained(cls, path: str, device: torch.device,
                        dtype: torch.dtype) -> MusicGenMelodyDecoder:
        model = MusicgenMelodyForConditionalGeneration.from_pretrained(path, dtype=dtype)
        return cls(model.to(device), AutoTokenizer.from_pretrained(path), ChromaSpec.read(path))

    def _prefix(self, text_states: torch.Tensor, chroma: torch.Tensor | None,
                guidance: float) -> torch.Tensor:
        """The decoder's conditioning prefix [chroma ; text] (B or 2B, L, hidden)."""
        model = self.model
        dtype = next(model.parameters()).dtype
        text = text_states.to(self.device, dtype)
        hidden = model.decoder.config.hidden_size
        if text.shape[-1] != hidden:  # transformers has the projection exactly then
            text = model.enc_to_dec_proj(text)
        b = text.shape[0]
        null = torch.zeros(b, 1, model.config.num_chroma, device=self.device, dtype=dtype)
        null[:, :, 0] = 1
        features = null if chroma is None else chroma.to(self.device, dtype)
        if guidance > 1:
            text = torch.cat([text, torch.zeros_like(text)])
            features = torch.cat([features, null.expand(-1, features.shape[1], -1)])
        audio = features
        if model.config.num_chroma != hidden:
            audio = model.audio_enc_to_dec_proj(features)
        length = int(model.config.chroma_length)
        audio = audio.repeat(1, math.ceil(length / audio.shape[1]), 1)[:, :length]
        return torch.cat([audio, text], dim=1)

    def _chroma(self, sources: list[np.ndarray] | None, batch: int, seconds: float,
                edit_strength: float) -> torch.Tensor | None:
        """(B, frames, num_chroma) chroma of the sources' first window; None: no melody."""
        if sources is None or edit_strength >= 1.0:
            return None
        if len(sources) != batch:
            raise ValueError(f"{len(sources)} sources for a batch of {batch}")
        span = min(seconds, self.window_seconds)
        return torch.from_numpy(np.stack([melody_chroma(self.fit_source(s, span), self.chroma)
                                          for s in sources]))

    def _inputs(self, text_states: torch.Tensor, guidance: float,
                chroma: torch.Tensor | None) -> dict:
        b = text_states.shape[0]
        return {"input_ids": torch.zeros(b, 1, dtype=torch.long, device=self.device),
                "encoder_hidden_states": self._prefix(text_states, chroma, guidance),
                "guidance_scale": guidance if guidance > 1 else None, "do_sample": True}

    def _state_inputs(self, conditioning: torch.Tensor, guidance: float,
                      sources: list[np.ndarray] | None, seconds: float,
                      edit_strength: float) -> tuple[dict, None]:
        chroma = self._chroma(sources, conditioning.shape[0], seconds, edit_strength)
        states, _ = self._heard(conditioning)  # a prefix has no mask: padding is zeros
        return self._inputs(states, guidance, chroma), None  # no audio prompt

    def _text_inputs(self, texts: list[str], guidance: float, sources: list[np.ndarray] | None,
                     seconds: float, edit_strength: float) -> tuple[dict, None]:
        enc = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        states = self.model.text_encoder(**enc).last_hidden_state
        states = states * enc["attention_mask"][..., None].to(states.dtype)  # as transformers
        chroma = self._chroma(sources, len(texts), seconds, edit_strength)
        return self._inputs(states, guidance, chroma), None
