"""Stereo MusicGen (`tiny-stereo`, facebook/musicgen-stereo-*): two-channel waveforms
(candidates, samples, 2) through the decoder, the windowed path, the CLI, the judge and
the evaluation's reader; mono stays (candidates, samples)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers.modeling_outputs import BaseModelOutput

from m2ugen.cli import main
from m2ugen.eval.embeddings import ClipFiles
from m2ugen.modules.decoders.musicgen import MusicGenDecoder
from m2ugen.presets import PRESET_NAMES, preset_config
from m2ugen.presets.tiny import tiny_corpus
from m2ugen.presets.tiny_decoders import (
    MUSICGEN_CODEBOOKS,
    MUSICGEN_WINDOW_SECONDS,
    build_tiny_musicgen,
)


@pytest.fixture(scope="module")
def stereo(tmp_path_factory) -> MusicGenDecoder:
    path = tmp_path_factory.mktemp("stereo") / "musicgen"
    build_tiny_musicgen(path, tiny_corpus(0)[:300], channels=2)
    return MusicGenDecoder.from_pretrained(str(path), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def cond() -> torch.Tensor:
    return 0.5 * torch.randn(1, 128, 48, generator=torch.Generator().manual_seed(3))


def test_stereo_decoder_interleaves_two_channels(stereo):
    assert (stereo.channels, stereo.num_codebooks) == (2, 2 * MUSICGEN_CODEBOOKS)
    assert stereo.model.config.audio_encoder.audio_channels == 1  # EnCodec stays mono


def test_a_long_stereo_piece_starts_as_transformers_own_stereo_pass(stereo, cond):
    """Our code extraction (delays shared by a left and a right codebook) and per-channel
    EnCodec decode agree with generate()'s own stereo output over the first window."""
    seconds = 1.6  # two windows of the tiny 1 s one
    piece = stereo.generate(cond, seconds, 3.0, seed=7)
    assert piece.shape == (1, int(seconds * stereo.sample_rate), 2)
    assert not np.allclose(piece[..., 0], piece[..., 1], atol=1e-3)  # two distinct channels
    torch.manual_seed(7)
    frames = int(MUSICGEN_WINDOW_SECONDS * stereo.frame_rate)
    audio = stereo.model.generate(
        input_ids=torch.zeros(1, 1, dtype=torch.long),
        encoder_outputs=BaseModelOutput(last_hidden_state=torch.cat([cond, 0 * cond])),
        attention_mask=torch.cat([torch.ones(1, 128, dtype=torch.long),
                                  torch.zeros(1, 128, dtype=torch.long)]),
        guidance_scale=3.0, do_sample=True, max_new_tokens=frames + MUSICGEN_CODEBOOKS - 1)
    assert audio.shape[1] == 2  # transformers' (B, channels, samples)
    short = stereo.generate(cond, MUSICGEN_WINDOW_SECONDS, 3.0, seed=7)
    np.testing.assert_array_equal(short, audio.numpy().transpose(0, 2, 1)[:, :short.shape[1]])
    n = short.shape[1] - 4 * stereo.sample_rate // int(stereo.frame_rate)  # EnCodec's tail
    np.testing.assert_allclose(piece[:, :n], short[:, :n], atol=1e-5)


def test_a_stereo_edit_hears_the_mono_source_in_both_channels(stereo, cond):
    t = np.arange(stereo.sample_rate) / stereo.sample_rate
    source = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    heard = stereo.reconstruct([source], 0.5)
    assert heard.shape == (1, stereo.sample_rate // 2, 2)
    np.testing.assert_array_equal(heard[..., 0], heard[..., 1])
    edit = stereo.generate(cond, 0.4, 3.0, seed=1, sources=[source], edit_strength=0.5)
    assert edit.shape == (1, int(0.4 * stereo.sample_rate), 2)


def test_stereo_hub_presets():
    for size in ("small", "medium", "large"):
        cfg = preset_config(f"musicgen-stereo-{size}")
        assert cfg.decoder_path == f"facebook/musicgen-stereo-{size}"
        assert (cfg.decoder, cfg.projector_tokens, cfg.projector_dim) == ("musicgen", 128, 768)
    assert "tiny-stereo" in PRESET_NAMES


def test_cli_writes_two_channel_wavs_that_the_judge_and_eval_read(ckpts, tmp_path, capsys):
    from m2ugen.eval.config import resolve_eval_models

    out = tmp_path / "stereo.wav"
    code = main(["chat", "--model", "tiny-stereo", "--music", "always", "--seconds", "0.5",
                 "--num-candidates", "2", "--rerank", "clap", "--judge",
                 resolve_eval_models("tiny").clap, "--seed", "0", "--max-new-tokens", "3",
                 "--out", str(out), "A calm piano piece"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "0.5 s stereo at 32000 Hz" in err and "best first" in err
    for path in (out, tmp_path / "stereo-2.wav"):
        wave, sr = sf.read(path, dtype="float32")
        assert (wave.shape, sr) == ((16000, 2), 32000)
        assert not np.allclose(wave[:, 0], wave[:, 1], atol=1e-3)
        # the evaluation reads a stereo file as its channel mean (one mono clip)
        np.testing.assert_allclose(ClipFiles([path])[0].waveform, wave.mean(axis=1),
                                   atol=1e-6)


def test_the_app_plays_two_channel_music(ckpts, tmp_path):
    from m2ugen.app import AssistantApp
    from m2ugen.model import M2UGen

    app = AssistantApp(M2UGen.from_pretrained("tiny-stereo"), media_root=tmp_path)
    shown, _, state = list(app.respond(
        "A calm piano piece", None, temperature=0, top_p=0.8, max_new_tokens=8,
        music="always", seconds=1, guidance=3.5, steps=0, condition="embedding", seed=0))[-1]
    player = shown[-1]["content"]
    assert type(player).__name__ == "Audio"
    path = player.value["path"] if isinstance(player.value, dict) else player.value
    assert sf.info(path).channels == 2 and sf.info(state.last_music).channels == 2
    # Stereo off: the same render, mixed down to one channel
    stereo_wave, _ = sf.read(str(state.last_music))
    shown, _, state = list(app.respond(
        "A calm piano piece", None, temperature=0, top_p=0.8, max_new_tokens=8,
        music="always", seconds=1, guidance=3.5, steps=0, condition="embedding", seed=0,
        stereo=False))[-1]
    mono_wave, _ = sf.read(str(state.last_music))
    assert mono_wave.ndim == 1
    np.testing.assert_allclose(mono_wave, stereo_wave.mean(axis=1), atol=1e-4)
