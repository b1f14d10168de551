"""The listener of best-of-N (`--num-candidates N --rerank clap`): a CLAP model scores each
rendered candidate against a text, exactly as the evaluation's `clap_score` metric scores a
clip against its caption (`ClapEmbedder` embeds, `audio_metrics.clap_scores` compares).

`music.render_music` receives the judge (its `Judge` protocol: `name`, `ref`, `score`), so
the music code needs no import of the evaluation (which sits above the chat). MusicLM's
answer to quality, with MuLaN as the listener; the published M2UGen ranked AudioLDM2's
three waveforms by CLAP against the prompt text too.
"""

from __future__ import annotations

import numpy as np
import torch

from m2ugen.eval import audio_metrics as am
from m2ugen.eval.config import STANDARD
from m2ugen.eval.embeddings import Audio, ClapEmbedder
from m2ugen.eval.tiny import ensure_tiny_eval

DEFAULT_JUDGE = STANDARD.clap  # the CLAP that `m2ugen eval` computes clap_score with
TINY_JUDGE = "tiny"  # the offline tiny evaluation CLAP (eval/tiny.py), random weights


class ClapJudge:
    """Scores candidates by the cosine of their CLAP audio embedding with a text's (-1..1)."""

    name = "clap"  # the --rerank value it serves

    def __init__(self, embedder: ClapEmbedder) -> None:
        self.embedder = embedder

    @property
    def ref(self) -> str:
        return self.embedder.ref

    @classmethod
    def load(cls, ref: str | None = None, device: str | torch.device = "cpu") -> ClapJudge:
        """The CLAP by hub id or directory (None: `DEFAULT_JUDGE`; "tiny": the offline
        tiny one, built on first use); a ref that cannot be loaded is one ConfigError."""
        ref = ref or DEFAULT_JUDGE
        if ref == TINY_JUDGE:
            ref = str(ensure_tiny_eval() / "clap")
        return cls(ClapEmbedder.load(ref, torch.device(device), what="CLAP judge (--judge)"))

    def score(self, text: str, waveforms: np.ndarray, sample_rate: int) -> np.ndarray:
        """(candidates,) float32: each waveform (candidates, samples) against `text`.
        Stereo candidates (candidates, samples, channels) are heard as their mono mix."""
        waves = np.asarray(waveforms, dtype=np.float32)
        if waves.ndim == 3:
            waves = waves.mean(axis=-1)
        audio = self.embedder.audio([Audio(w, sample_rate) for w in waves])  # (N, d)
        caption = self.embedder.text([text]).expand(len(audio), -1)  # (N, d)
        return am.clap_scores(caption, audio).numpy().astype(np.float32)
