"""MusicGen-Melody: an edit hears the source's chroma (issue 17, item 2; preset tiny-melody).

The chroma is a one-hot pitch class per frame, so the decoder hears the melody and harmony,
not the recording: the same chord an octave higher is the same condition (bit-identical
render for the same seed), another chord is not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2ugen.cli import main
from m2ugen.media import save_audio
from m2ugen.modules.decoders.musicgen_melody import ChromaSpec, MusicGenMelodyDecoder, melody_chroma
from m2ugen.presets.tiny_decoders import MELODY_CHROMA, MELODY_CHROMA_LENGTH


def _chord(freqs, sr: int, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.2 * sum(np.sin(2 * np.pi * f * t) for f in freqs)).astype(np.float32)


C_MAJOR = (261.63, 329.63, 392.0)
C_MAJOR_UP = tuple(2 * f for f in C_MAJOR)  # the same pitch classes, an octave higher
F_SHARP = (369.99, 466.16, 554.37)


@pytest.fixture(scope="module")
def melody_model(ckpts):
    from m2ugen.model import M2UGen

    return M2UGen.from_pretrained("tiny-melody")


@pytest.fixture(scope="module")
def decoder(melody_model):
    return melody_model.load_decoder()


def test_tiny_melody_is_a_melody_decoder_told_by_its_config(decoder, melody_model):
    assert isinstance(decoder, MusicGenMelodyDecoder)
    assert melody_model.config.decoder == "musicgen"  # same kind; the folder's config decides
    assert decoder.chroma == ChromaSpec(**MELODY_CHROMA)
    assert decoder.model.config.chroma_length == MELODY_CHROMA_LENGTH
    cfg = melody_model.config
    assert decoder.cond_shape == (cfg.projector_tokens, cfg.projector_dim)


def test_chroma_is_the_pitch_class_one_hot():
    spec = ChromaSpec(**MELODY_CHROMA)
    sr = spec.sampling_rate
    a440 = melody_chroma(_chord([440.0], sr), spec)
    assert a440.shape == (2 * sr // spec.hop_length + 1, 12)  # centred frames
    assert (a440.sum(axis=1) == 1).all() and (a440.argmax(axis=1) == 9).all()  # C=0 … A=9
    up = melody_chroma(_chord([880.0], sr), spec)
    np.testing.assert_array_equal(a440, up)


def test_melody_edit_hears_pitch_classes_not_the_recording(decoder):
    sr = decoder.sample_rate
    cond = 0.5 * torch.randn(1, *decoder.cond_shape, generator=torch.Generator().manual_seed(0))

    def render(freqs=None, strength=0.6, seconds=1.0):
        sources = None if freqs is None else [_chord(freqs, sr)]
        return decoder.generate(cond, seconds, 3.0, seed=2, sources=sources,
                                edit_strength=strength)

    c, up, fsharp, none = render(C_MAJOR), render(C_MAJOR_UP), render(F_SHARP), render()
    np.testing.assert_array_equal(c, up)
    scale = np.abs(c).max()
    assert np.abs(c - fsharp).max() > 0.1 * scale
    assert np.abs(c - none).max() > 0.1 * scale
    np.testing.assert_array_equal(render(C_MAJOR, strength=1.0), none)  # 1 ignores it
    long = render(C_MAJOR, seconds=2.5)  # windowed (tiny window 1 s): every window hears it
    assert long.shape == (1, int(2.5 * sr)) and np.isfinite(long).all()


def test_melody_hears_zero_padded_states_as_it_hears_the_caption(decoder):
    """The melody decoder's conditioning is a prefix without a mask: zero-padded projector
    states are cut to the caption's positions, so two captions of different lengths render
    as its text path renders them (with the 128 positions, the zeros joined the prefix)."""
    from m2ugen.modules.decoders import TARGET_SCALE

    captions = ["A sad violin.", "Energetic rock with loud drums and a guitar solo, 140 BPM."]
    target, mask = decoder.target(captions)
    states = target * mask / TARGET_SCALE
    kw = {"seconds": 0.3, "guidance": 3.0, "seed": 4}
    np.testing.assert_allclose(decoder.generate(states, **kw),
                               decoder.generate_from_text(captions, **kw), atol=1e-4)


def test_cli_chat_with_tiny_melody(ckpts, tmp_path, capsys):
    sr = 32000
    song, other = tmp_path / "song.wav", tmp_path / "other.wav"
    save_audio(song, _chord(C_MAJOR, sr), sr)
    save_audio(other, _chord(F_SHARP, sr), sr)
    outs = {}
    for name, audio, extra in (("c", song, []), ("f", other, []),
                               ("ignored", song, ["--source", "ignore"])):
        out = tmp_path / f"{name}.wav"
        code = main(["chat", "--model", "tiny-melody", "--audio", str(audio), "--music",
                     "always", "--seconds", "1", "--seed", "0", "--max-new-tokens", "4",
                     "--temperature", "0", "--out", str(out), *extra, "Make it jazzier"])
        assert code == 0, capsys.readouterr().err
        outs[name] = out.read_bytes()
    assert outs["c"] != outs["f"]  # the source's melody conditions the render
    assert outs["ignored"] not in (outs["c"], outs["f"])


def test_melody_hears_a_projectors_near_zero_padding_as_zeros(decoder):
    """A trained projector's padding is ~0, not exactly 0: the melody decoder (a prefix
    without a mask) hears it as the zeros of its text path — each row's padding is zeroed,
    not only cut past the longest caption."""
    from m2ugen.modules.decoders import TARGET_SCALE

    captions = ["A sad violin.", "Energetic rock with loud drums and a guitar solo, 140 BPM."]
    target, mask = decoder.target(captions)
    states = target * mask / TARGET_SCALE
    g = torch.Generator().manual_seed(3)
    near = states + 0.01 * torch.randn(states.shape, generator=g) * ~mask
    assert decoder.lengths(near).tolist() == decoder.lengths(states).tolist()
    kw = {"seconds": 0.3, "guidance": 3.0, "seed": 4}
    np.testing.assert_allclose(decoder.generate(near, **kw),
                               decoder.generate_from_text(captions, **kw), atol=1e-4)
