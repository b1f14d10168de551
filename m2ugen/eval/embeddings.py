"""The evaluation's embedding and classifier models, loaded by hub id or directory.

Every model is a transformers class loaded with `from_pretrained` — real weights by hub id,
the tiny offline ones (`tiny.py`) by directory, through the same code:

| role | class | gives |
|---|---|---|
| clap | `ClapModel` + `ClapProcessor` | one L2-normalised audio or text embedding per item (B, d) |
| encodec | `EncodecModel` (its encoder, before quantisation) | frame embeddings (T, d) per item |
| mert | `HubertModel` (MERT natively, `modules.encoders.load_mert`) | frames (T, d), one layer |
| ast | `ASTForAudioClassification` (AudioSet) | label logits (B, 527) |

Audio arrives as float32 mono arrays at any rate and is resampled to each model's own rate
(soxr, `media.resample_audio`). Clips are read a batch at a time (`ClipFiles` loads
each file only when it is reached), so a run over thousands of clips holds a batch of
waveforms, not all of them; frame embedders batch the clips of equal length.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    ASTFeatureExtractor,
    ASTForAudioClassification,
    AutoFeatureExtractor,
    ClapModel,
    ClapProcessor,
    EncodecModel,
)

from m2ugen.errors import loading
from m2ugen.media import read_audio, resample_audio
from m2ugen.modules.encoders import load_mert


@dataclass(frozen=True)
class Audio:
    """One mono waveform (samples,) float32 at `sample_rate`."""

    waveform: np.ndarray
    sample_rate: int


class ClipFiles(Sequence[Audio]):
    """Audio files as a sequence of clips, each decoded when it is indexed."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):  # int -> Audio; slice -> list[Audio]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        wav, sr = read_audio(self.paths[index], max_seconds=None)
        return Audio(wav, sr)


def _at(clips: Sequence[Audio], sr: int, max_samples: int | None = None) -> list[np.ndarray]:
    """Each clip resampled to `sr` (and cut to `max_samples`, when given)."""
    out = []
    for clip in clips:
        wav = np.asarray(clip.waveform, dtype=np.float32)
        if clip.sample_rate != sr:
            wav = resample_audio(wav, clip.sample_rate, sr)
        out.append(wav[:max_samples] if max_samples else wav)
    return out


def _by_length(waves: list[np.ndarray]) -> list[list[int]]:
    """Indices of `waves` grouped by length (equal lengths batch without padding)."""
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(waves):
        groups.setdefault(len(w), []).append(i)
    return list(groups.values())


@torch.no_grad()
def _iter_frames(embedder, clips: Sequence[Audio], batch_size: int) -> Iterator[torch.Tensor]:
    """Each clip's (T, d) frames in order, `batch_size` clips loaded at a time; clips of
    equal length within a chunk run as one batch (`embedder._embed`)."""
    for start in range(0, len(clips), batch_size):
        waves = _at(clips[start:start + batch_size], embedder.sample_rate)
        out: list[torch.Tensor | None] = [None] * len(waves)
        for group in _by_length(waves):
            for i, frames in zip(group, embedder._embed([waves[i] for i in group]),
                                 strict=True):
                out[i] = frames
        yield from out  # type: ignore[misc]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class ClapEmbedder:
    """CLAP text and audio embeddings in one space (L2-normalised)."""

    role = "clap"

    def __init__(self, model: ClapModel, processor: ClapProcessor, ref: str) -> None:
        self.model = model.eval()
        self.processor = processor
        self.ref = ref

    @classmethod
    def load(cls, ref: str, device: torch.device,
             what: str = "CLAP evaluation model") -> ClapEmbedder:
        with loading(what, ref):
            return cls(ClapModel.from_pretrained(ref).to(device),
                       ClapProcessor.from_pretrained(ref), ref)

    @property
    def sample_rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    @torch.no_grad()
    def audio(self, clips: Sequence[Audio], batch_size: int = 16) -> torch.Tensor:
        """(B, d): CLAP sees each clip's first window (10 s for the released models)."""
        fe = self.processor.feature_extractor
        out = []
        for start in range(0, len(clips), batch_size):
            waves = _at(clips[start:start + batch_size], self.sample_rate,
                        int(fe.nb_max_samples))
            inputs = fe(waves, sampling_rate=self.sample_rate,
                        return_tensors="pt").to(_device(self.model))
            out.append(self.model.get_audio_features(**inputs).pooler_output)
        return torch.nn.functional.normalize(torch.cat(out).float().cpu(), dim=-1)

    @torch.no_grad()
    def text(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """(B, d) for captions (truncated to the text tower's length)."""
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.processor.tokenizer(list(texts[start:start + batch_size]), padding=True,
                                           truncation=True, return_tensors="pt")
            out.append(self.model.get_text_features(**enc.to(_device(self.model))).pooler_output)
        return torch.nn.functional.normalize(torch.cat(out).float().cpu(), dim=-1)


class EncodecEmbedder:
    """EnCodec's encoder output before quantisation: (T, d) frames per clip."""

    role = "encodec"

    def __init__(self, model: EncodecModel, features, ref: str) -> None:
        self.model = model.eval()
        self.features = features
        self.ref = ref

    @classmethod
    def load(cls, ref: str, device: torch.device) -> EncodecEmbedder:
        with loading("EnCodec evaluation model", ref):
            return cls(EncodecModel.from_pretrained(ref).to(device),
                       AutoFeatureExtractor.from_pretrained(ref), ref)

    @property
    def sample_rate(self) -> int:
        return int(self.model.config.sampling_rate)

    def _embed(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        x = torch.from_numpy(np.stack(waves))[:, None]  # (B, 1, S), equal lengths
        emb = self.model.encoder(x.to(_device(self.model)))  # (B, d, T)
        return [e.T.float().cpu() for e in emb]

    def iter_frames(self, clips: Sequence[Audio], batch_size: int = 16
                    ) -> Iterator[torch.Tensor]:
        yield from _iter_frames(self, clips, batch_size)

    def frames(self, clips: Sequence[Audio]) -> list[torch.Tensor]:
        return list(self.iter_frames(clips))


class MertEmbedder:
    """MERT frame features of one hidden layer: (T, d) per clip."""

    role = "mert"

    def __init__(self, model: torch.nn.Module, features, ref: str,
                 layer: int | None = None) -> None:
        self.model = model.eval()
        self.features = features
        self.ref = ref
        self.layer = layer if layer is not None else model.config.num_hidden_layers

    @classmethod
    def load(cls, ref: str, device: torch.device, layer: int | None = None) -> MertEmbedder:
        with loading("MERT evaluation model", ref):
            model, _ = load_mert(ref, torch.float32, device)
            return cls(model, AutoFeatureExtractor.from_pretrained(ref), ref, layer)

    @property
    def sample_rate(self) -> int:
        return int(self.features.sampling_rate)

    def _embed(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        inputs = self.features(waves, sampling_rate=self.sample_rate, return_tensors="pt")
        values = inputs["input_values"].to(_device(self.model))
        hidden = self.model(values, output_hidden_states=True).hidden_states[self.layer]
        return [h.float().cpu() for h in hidden]

    def iter_frames(self, clips: Sequence[Audio], batch_size: int = 16
                    ) -> Iterator[torch.Tensor]:
        yield from _iter_frames(self, clips, batch_size)

    def frames(self, clips: Sequence[Audio]) -> list[torch.Tensor]:
        return list(self.iter_frames(clips))


class AudioSetClassifier:
    """AST fine-tuned on AudioSet: label logits (B, labels) for KL and Inception Score."""

    role = "ast"

    def __init__(self, model: ASTForAudioClassification, features: ASTFeatureExtractor,
                 ref: str) -> None:
        self.model = model.eval()
        self.features = features
        self.ref = ref

    @classmethod
    def load(cls, ref: str, device: torch.device) -> AudioSetClassifier:
        with loading("AudioSet classifier (AST)", ref):
            return cls(ASTForAudioClassification.from_pretrained(ref).to(device),
                       ASTFeatureExtractor.from_pretrained(ref), ref)

    @property
    def sample_rate(self) -> int:
        return int(self.features.sampling_rate)

    @property
    def labels(self) -> list[str]:
        return [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    @torch.no_grad()
    def logits(self, clips: Sequence[Audio], batch_size: int = 16) -> torch.Tensor:
        """(B, labels); AST sees each clip's first `max_length` frames (10.24 s)."""
        out = []
        for start in range(0, len(clips), batch_size):
            inputs = self.features(_at(clips[start:start + batch_size], self.sample_rate),
                                   sampling_rate=self.sample_rate, return_tensors="pt")
            out.append(self.model(**inputs.to(_device(self.model))).logits)
        return torch.cat(out).float().cpu()
