"""The melody metrics on basic-pitch's real, trained transcriber (its ONNX model ships in
its wheel): what it hears in synthetic music whose notes are known."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from m2ugen.data.synth import SR, Clip, render_clip
from m2ugen.eval import pitch
from m2ugen.eval.embeddings import Audio

pytestmark = pytest.mark.skipif(not pitch.available(), reason="basic-pitch is not installed "
                                "(make setup installs it with --no-deps)")
C_MAJOR = Clip("c.wav", "piano", 100, 0, "major")  # arpeggio C4 E4 G4 C5 on every beat


@pytest.fixture(scope="module")
def transcribe():
    model = pitch.Transcriber()
    return lambda clip: model.transcribe(Audio(render_clip(clip, seed=0), SR))


def test_the_transcriber_hears_the_arpeggio(transcribe):
    notes = transcribe(C_MAJOR)
    assert {0, 4, 7} == set(np.argsort(notes.pitch_classes().sum(axis=1))[-3:])  # C, E, G
    assert {60, 64, 67, 72} <= {int(p) for p in notes.pitches}
    beats = 60.0 / C_MAJOR.bpm
    onsets = np.sort(notes.intervals[notes.pitches <= 72, 0])
    assert np.median(np.diff(np.unique(onsets.round(1)))) == pytest.approx(beats, abs=0.08)


def test_melody_metrics_keep_notes_and_forgive_tempo_only(transcribe):
    source = transcribe(C_MAJOR)
    assert pitch.melody_similarity(source, source) == pytest.approx(1.0)
    assert pitch.note_f1(source, source) == pytest.approx(1.0)
    faster = transcribe(dataclasses.replace(C_MAJOR, bpm=140))
    minor = transcribe(dataclasses.replace(C_MAJOR, mode="minor"))  # E → Eb
    tritone = transcribe(dataclasses.replace(C_MAJOR, tonic=6))  # F# major: no common notes
    assert pitch.melody_similarity(source, faster) > 0.9  # same notes, other times
    assert pitch.note_f1(source, faster) < 0.3  # ...which note F1 does not forgive
    assert pitch.melody_similarity(source, faster) > pitch.melody_similarity(source, minor) \
        > pitch.melody_similarity(source, tritone)
    assert pitch.note_f1(source, minor) > 0.5 > pitch.note_f1(source, tritone)
