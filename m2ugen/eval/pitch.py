"""Melody preservation through a real, trained transcriber: Spotify's basic-pitch.

basic-pitch ships its ICASSP-2022 model inside its wheel (`nmp.onnx`, 230 KB, run by
onnxruntime), so these metrics run on trained weights offline. Its own requirements force
TensorFlow (and with it numpy<2) on Linux, so `make setup` installs it with `--no-deps`
beside onnxruntime, mir_eval, pretty_midi and resampy (docs/STACK_eval.md); where it is
missing the metrics are reported as not computed.

- melody_dtw: the transcriber's note posteriorgram (frames × 88 piano keys) folded into 12
  pitch classes, the source and the edit aligned by librosa's DTW, mean cosine similarity
  of aligned frames (torchmetrics) — like chroma similarity, but from a model that hears
  notes rather than spectral energy (harmonics, drums);
- note_f1: mir_eval's note-transcription F1 between the notes transcribed from the source
  and from the edit (onsets within 50 ms, pitches within 50 cents, offsets ignored): how
  many of the source's notes the edit keeps exactly where they were.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import librosa
import numpy as np
import torch
from torchmetrics.functional import cosine_similarity

from m2ugen.errors import ConfigError
from m2ugen.eval.embeddings import Audio
from m2ugen.media import save_audio

_MIDI_LOW = 21  # basic-pitch's 88 keys start at A0
FRAME_THRESHOLD = 0.3  # basic-pitch's own: activations below it are not notes


def available() -> bool:
    try:
        version("basic-pitch")
        version("onnxruntime")
    except PackageNotFoundError:
        return False
    return True


def model_id() -> str:
    return f"basic-pitch {version('basic-pitch')} ICASSP-2022 (nmp.onnx, in its wheel)"


@dataclass
class Transcription:
    posteriorgram: np.ndarray  # (frames, 88) note activations
    intervals: np.ndarray  # (notes, 2) onset, offset in seconds
    pitches: np.ndarray  # (notes,) MIDI numbers

    def pitch_classes(self) -> np.ndarray:
        """(12, frames): the note activations (those ≥ basic-pitch's frame threshold) summed
        per pitch class, C first."""
        active = np.where(self.posteriorgram >= FRAME_THRESHOLD, self.posteriorgram, 0.0)
        folded = np.zeros((12, active.shape[0]))
        for key in range(88):
            folded[(key + _MIDI_LOW) % 12] += active[:, key]
        return folded


class Transcriber:
    """basic-pitch's ONNX model, loaded once."""

    def __init__(self) -> None:
        if not available():
            raise ConfigError("the melody metrics need basic-pitch and onnxruntime: run "
                              "`make setup` (it installs basic-pitch with --no-deps)")
        quiet = logging.getLogger()  # basic-pitch warns on import about absent TF/CoreML
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():  # resampy imports the deprecated pkg_resources
                warnings.simplefilter("ignore")
                from basic_pitch import ICASSP_2022_MODEL_PATH
                from basic_pitch.inference import Model, predict
        finally:
            quiet.setLevel(level)
        self._predict = predict
        self._model = Model(ICASSP_2022_MODEL_PATH)

    def transcribe(self, clip: Audio) -> Transcription:
        with tempfile.TemporaryDirectory() as tmp:  # basic-pitch reads files only
            path = Path(tmp) / "clip.wav"
            save_audio(path, clip.waveform, clip.sample_rate)
            with contextlib.redirect_stdout(io.StringIO()):  # it prints "Predicting MIDI…"
                out, _, notes = self._predict(path, self._model)
        intervals = np.array([[n[0], n[1]] for n in notes], dtype=np.float64).reshape(-1, 2)
        pitches = np.array([n[2] for n in notes], dtype=np.float64)
        return Transcription(np.asarray(out["note"], dtype=np.float64), intervals, pitches)


def melody_similarity(source: Transcription, edited: Transcription) -> float:
    """Mean cosine similarity of DTW-aligned pitch-class frames (0..1; frames without
    notes count as matching only frames without notes)."""
    a, b = source.pitch_classes(), edited.pitch_classes()
    if a.shape[1] == 0 or b.shape[1] == 0:
        return 0.0
    _, path = librosa.sequence.dtw(X=a + 1e-9, Y=b + 1e-9, metric="cosine")
    return float(cosine_similarity(torch.from_numpy(a[:, path[:, 0]].T + 1e-9),
                                   torch.from_numpy(b[:, path[:, 1]].T + 1e-9),
                                   reduction="mean"))


def note_f1(source: Transcription, edited: Transcription) -> float:
    """mir_eval note F1 (onset ±50 ms, pitch ±50 cents, offsets ignored) in 0..1."""
    import mir_eval

    if len(source.pitches) == 0 or len(edited.pitches) == 0:
        return float(len(source.pitches) == len(edited.pitches))  # both silent: kept
    _, _, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(
        source.intervals, librosa.midi_to_hz(source.pitches), edited.intervals,
        librosa.midi_to_hz(edited.pitches), offset_ratio=None)
    return float(f1)
