"""Audio metrics over embeddings and classifier outputs, computed by the field's packages.

- FAD: torchmetrics' Fréchet distance (`FrechetInceptionDistance` with a custom feature
  module) over embedding sets — here the module is the identity on embeddings computed
  once by `embeddings.py`, so one set of embeddings serves every metric;
- KL: torchmetrics' `KLDivergence` between the AudioSet label distributions (softmax of
  AST's logits) of each reference clip and its generated counterpart;
- Inception Score: torchmetrics' `InceptionScore` with AST's logits as the "inception" output;
- CLAP score: torchmetrics' cosine similarity of CLAP text and audio embeddings;
- chroma similarity: librosa's chromagrams of source and edit, aligned by librosa's DTW,
  compared frame by frame with torchmetrics' cosine similarity.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import librosa
import numpy as np
import torch
from torch import nn
from torchmetrics.functional import cosine_similarity
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.regression import KLDivergence

from m2ugen.errors import ConfigError


class _Given(nn.Module):
    """The "feature network" of torchmetrics' FID/IS: features already computed."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(reference: Iterable[torch.Tensor], generated: Iterable[torch.Tensor]
                     ) -> float:
    """Fréchet distance between two embedding sets (FAD when they embed audio).

    Each element is one clip's embeddings, (d,) or (frames, d): every row is a sample of
    its set (frame-level embedders such as EnCodec contribute all their frames). The sets
    are consumed as they come (generators welcome): torchmetrics keeps only running sums.
    """
    metric: FrechetInceptionDistance | None = None
    counts = {True: 0, False: 0}
    for real, embeddings in ((True, reference), (False, generated)):
        for e in embeddings:
            rows = e.reshape(-1, e.shape[-1]).double()
            if metric is None:
                metric = FrechetInceptionDistance(feature=_Given(rows.shape[1]))
                metric.set_dtype(torch.float64)
            metric.update(rows, real=real)
            counts[real] += len(rows)
    if metric is None or min(counts.values()) < 2:
        raise ConfigError("the Fréchet distance needs at least two embeddings in each set; "
                          "evaluate more items (raise --limit)")
    return max(0.0, float(metric.compute()))  # rounding can leave -1e-12 for equal sets


def kl_per_item(reference_logits: torch.Tensor, generated_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_ref ‖ p_gen) per pair (B,), p = softmax of the classifier's logits (B, labels)."""
    metric = KLDivergence(log_prob=True, reduction="none")
    ref = torch.log_softmax(reference_logits.double(), dim=-1)
    gen = torch.log_softmax(generated_logits.double(), dim=-1)
    return metric(ref, gen).float().reshape(-1)  # torchmetrics gives one pair as a scalar


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0
                    ) -> tuple[float, float]:
    """(mean, std) Inception Score of a set from its classifier logits (N, labels).

    Splits are capped so that each holds at least two items; torchmetrics shuffles the
    items before splitting, under `seed`.
    """
    splits = max(1, min(splits, len(logits) // 2))
    with warnings.catch_warnings():  # "features kept in a buffer"; the std of one split
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=_Given(logits.shape[1]), splits=splits)
        metric.update(logits.double())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = metric.compute()
    return float(mean), (float(std) if splits > 1 else 0.0)


def clap_scores(text_embeddings: torch.Tensor, audio_embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each caption with its clip (B,); embeddings (B, d)."""
    return cosine_similarity(audio_embeddings.double(), text_embeddings.double(),
                             reduction="none").float()


def chromagram(waveform: np.ndarray, sample_rate: int, hop_length: int = 512) -> np.ndarray:
    """(12, frames) librosa CQT chromagram (pitch classes C..B, tuning estimated)."""
    wav = np.asarray(waveform, dtype=np.float32)
    with warnings.catch_warnings():  # short clips: "n_fft too large" in the lowest octaves
        warnings.simplefilter("ignore", UserWarning)
        return librosa.feature.chroma_cqt(y=wav, sr=sample_rate, hop_length=hop_length)


def chroma_similarity(source: np.ndarray, edited: np.ndarray, sample_rate: int
                      ) -> tuple[float, float]:
    """How much of the source's harmony/melody an edit keeps, in [-1, 1] (1 = the same).

    Returns (frame-aligned, DTW-aligned): the mean cosine similarity of the two chromagrams'
    frames taken at the same times (cut to the shorter), and along librosa's DTW path
    (cosine cost), which forgives tempo changes such as "speed it up to 140 BPM".
    """
    a, b = chromagram(source, sample_rate), chromagram(edited, sample_rate)
    n = min(a.shape[1], b.shape[1])
    direct = cosine_similarity(torch.from_numpy(a[:, :n].T).double(),
                               torch.from_numpy(b[:, :n].T).double(), reduction="mean")
    _, path = librosa.sequence.dtw(X=a, Y=b, metric="cosine")
    aligned = cosine_similarity(torch.from_numpy(a[:, path[:, 0]].T).double(),
                                torch.from_numpy(b[:, path[:, 1]].T).double(), reduction="mean")
    return float(direct), float(aligned)
