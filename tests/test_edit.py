"""Edits that keep the song: the decoder also hears the source music (issue 17, item 2).

MusicGen continues the source's start (EnCodec codes as its audio prompt); AudioLDM2
re-noises the source's VAE latent to `edit_strength` of its schedule and denoises from
there (SDEdit). "What the decoder hears" is `decoder.reconstruct(source)`: the source
through the decoder's own autoencoder, which for the random tiny codecs is far from the
source itself, so it is the reference an edit is compared with.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2ugen.chat import ChatSession
from m2ugen.cli import main
from m2ugen.errors import ChatError
from m2ugen.media import load_audio, save_audio
from m2ugen.modules.decoders.audioldm2 import MEL_FLOOR, log_mel
from m2ugen.music import MusicSettings

SECONDS = 2.0


def _chord(sr: int, seconds: float = 3.0) -> np.ndarray:
    """A C major triad (C4 E4 G4), amplitude-modulated: a source with a clear chroma."""
    t = np.arange(int(seconds * sr)) / sr
    wave = sum(np.sin(2 * np.pi * f * t) for f in (261.63, 329.63, 392.0))
    return (0.2 * wave * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def musicgen(tiny_model):
    return tiny_model.load_decoder()


@pytest.fixture(scope="module")
def audioldm2(tiny_audioldm2_model):
    return tiny_audioldm2_model.load_decoder()


@pytest.fixture(scope="module")
def cond(musicgen):
    return 0.5 * torch.randn(1, *musicgen.cond_shape, generator=torch.Generator().manual_seed(3))


# --- MusicGen: the audio prompt --------------------------------------------------------------

@pytest.mark.parametrize("seconds", [SECONDS, 2.6])  # one pass; windowed (tiny window: 1 s)
def test_musicgen_edit_starts_as_the_decoder_hears_the_source(musicgen, cond, seconds):
    sr = musicgen.sample_rate
    src = _chord(sr)
    strength = 0.6
    edit = musicgen.generate(cond, seconds, 3.0, seed=1, sources=[src], edit_strength=strength)
    plain = musicgen.generate(cond, seconds, 3.0, seed=1)
    heard = musicgen.reconstruct([src], seconds)
    assert edit.shape == plain.shape == heard.shape == (1, int(seconds * sr))
    kept = int((1 - strength) * seconds * sr)
    head = kept - int(0.15 * sr)  # EnCodec's decoder looks ~0.1 s ahead across the seam
    np.testing.assert_allclose(edit[0, :head], heard[0, :head], atol=1e-5)
    assert np.abs(plain[0, :head] - heard[0, :head]).max() > 0.1 * np.abs(heard).max()
    # the rest is new music, not the source's continuation nor silence
    assert np.abs(edit[0, kept:] - heard[0, kept:]).max() > 0.1 * np.abs(heard).max()
    assert edit[0, kept:].std() > 0.1 * heard.std()


def test_strength_one_and_no_source_are_the_same_render(musicgen, cond):
    src = _chord(musicgen.sample_rate)
    a = musicgen.generate(cond, SECONDS, 3.0, seed=4, sources=[src], edit_strength=1.0)
    b = musicgen.generate(cond, SECONDS, 3.0, seed=4)
    np.testing.assert_array_equal(a, b)


def test_lower_strength_keeps_more_of_the_source(musicgen, cond):
    sr = musicgen.sample_rate
    src = _chord(sr)
    heard = musicgen.reconstruct([src], SECONDS)[0]

    def kept(strength: float) -> int:  # samples from the start that match what it hears
        edit = musicgen.generate(cond, SECONDS, 3.0, seed=5, sources=[src],
                                 edit_strength=strength)[0]
        return int(np.argmax(np.abs(edit - heard) > 1e-4))

    assert kept(0.8) < kept(0.5) < kept(0.2)
    assert abs(kept(0.5) - 0.5 * SECONDS * sr) < 0.15 * sr


# --- AudioLDM2: SDEdit -------------------------------------------------------------------------

def test_log_mel_matches_the_pipelines_mel_layout(audioldm2):
    sr = audioldm2.sample_rate
    vocoder = audioldm2.pipe.vocoder.config
    n_mels, hop = vocoder.model_in_dim, int(np.prod(vocoder.upsample_rates))
    t = np.arange(sr) / sr
    mel = log_mel(np.sin(2 * np.pi * 1000 * t), sr, n_mels, hop)
    assert mel.shape == (sr // hop, n_mels)  # one frame per hop: the pipeline's mel length
    assert mel.shape[0] == audioldm2._mel_frames(1.0)
    import librosa

    centres = librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=sr / 2)[1:-1]
    assert abs(int(mel.mean(0).argmax()) - int(np.abs(centres - 1000).argmin())) <= 1
    assert np.log(MEL_FLOOR) <= mel.min() < mel.max() < 5.0  # natural log of magnitudes


def _unet_calls(decoder, **kwargs):
    """Run a render and observe the UNet: (its input latents per call, the final latents
    the VAE decodes)."""
    inputs, final = [], []
    h1 = decoder.pipe.unet.register_forward_pre_hook(
        lambda m, args, kw: inputs.append((args[0] if args else kw["sample"]).detach().clone()),
        with_kwargs=True)
    h2 = decoder.pipe.vae.post_quant_conv.register_forward_pre_hook(
        lambda m, args: final.append(args[0].detach().clone()))
    try:
        decoder.generate(**kwargs)
    finally:
        h1.remove()
        h2.remove()
    return inputs, final[-1] * decoder.pipe.vae.config.scaling_factor


@pytest.mark.parametrize("scheduler", ["dpm++", "ddim"])
def test_audioldm2_edit_denoises_the_noised_source_latent(audioldm2, scheduler):
    from diffusers import DDIMScheduler

    sr = audioldm2.sample_rate
    src = _chord(sr)
    cond = 0.1 * torch.randn(1, *audioldm2.cond_shape, generator=torch.Generator().manual_seed(0))
    steps, strength, seed = 10, 0.4, 3
    args = dict(conditioning=cond, seconds=SECONDS, guidance=3.0, seed=seed, steps=steps,
                scheduler=scheduler)
    inputs, final = _unet_calls(audioldm2, sources=[src], edit_strength=strength, **args)
    assert len(inputs) == int(steps * strength)  # one batched CFG call per remaining step
    # by hand: the full schedule's last 4 timesteps; the VAE mean of the source's log-mel,
    # noised to the first of them with the seed's first normal draw
    full = audioldm2.make_scheduler(scheduler)
    full.set_timesteps(steps)
    partial = audioldm2.make_scheduler(scheduler, strength)
    partial.set_timesteps(steps)
    assert partial.timesteps.tolist() == full.timesteps[-int(steps * strength):].tolist()
    if scheduler == "dpm++":  # its sigmas follow the timesteps: sigma_t² = (1 - ᾱ_t) / ᾱ_t
        alpha = full.alphas_cumprod[partial.timesteps[0]]
        assert float(partial.sigmas[0]) == pytest.approx(float(((1 - alpha) / alpha) ** 0.5))
        assert len(partial.sigmas) == len(partial.timesteps) + 1
    with torch.no_grad():
        z0 = audioldm2._latents([src], SECONDS)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    by_hand = DDIMScheduler.from_config(audioldm2.schedule).add_noise(
        z0, noise, partial.timesteps[:1])
    torch.testing.assert_close(inputs[0][:1], by_hand, atol=1e-5, rtol=1e-4)
    # the lower the strength, the closer the result stays to the source's latent
    _, plain = _unet_calls(audioldm2, **args)
    _, strong = _unet_calls(audioldm2, sources=[src], edit_strength=0.8, **args)
    dist = [float((x - z0).norm()) for x in (final, strong, plain)]
    assert dist[0] < dist[1] < dist[2]


def test_audioldm2_strength_below_one_step_is_a_clear_error(audioldm2):
    cond = torch.zeros(1, *audioldm2.cond_shape)
    with pytest.raises(ChatError, match="edit_strength=0.05 leaves none of the 10"):
        audioldm2.generate(cond, 1.0, 3.0, 0, steps=10, sources=[_chord(16000)],
                           edit_strength=0.05)


# --- the chat and the CLI ----------------------------------------------------------------------

def test_chat_edit_hears_the_newest_attachment_only(tiny_model, musicgen, media_arrays,
                                                    tmp_path):
    sr = musicgen.sample_rate
    path = tmp_path / "song.wav"
    save_audio(path, _chord(sr), sr)
    opts = dict(music="always", seconds=SECONDS, seed=0, max_new_tokens=4)
    session = ChatSession(tiny_model)
    heard = session.send("Make it jazzier", audio=str(path), **opts)
    assert heard.music.source_heard and heard.music.edit_strength == 0.6
    ignored = ChatSession(tiny_model).send("Make it jazzier", audio=str(path),
                                           source="ignore", **opts)
    assert not ignored.music.source_heard
    reference = musicgen.reconstruct([load_audio(path, sr)], SECONDS)[0]
    head = int(0.25 * SECONDS * sr)
    np.testing.assert_allclose(heard.music.waveform[:head], reference[:head], atol=1e-5)
    assert np.abs(ignored.music.waveform[:head] - reference[:head]).max() > 1e-3
    # a picture attached after the song: "music for this picture" must not continue the song
    later = session.send("Compose music for this picture", image=media_arrays["image"], **opts)
    assert not later.music.source_heard
    again = session.send("Now edit the song", audio=str(path), **opts)
    assert again.music.source_heard


def test_settings_refuse_bad_edit_values():
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ChatError, match="edit_strength"):
            MusicSettings(edit_strength=bad).validate()
    with pytest.raises(ChatError, match="source='keep'.*hear, ignore"):
        MusicSettings(source="keep").validate()


def test_cli_edit_keeps_the_song_and_ignore_does_not(tiny_dir, musicgen, tmp_path, capsys):
    sr = musicgen.sample_rate
    song = tmp_path / "song.wav"
    save_audio(song, _chord(sr), sr)
    common = ["chat", "--model", str(tiny_dir), "--audio", str(song), "--music", "always",
              "--seconds", "1.5", "--seed", "0", "--max-new-tokens", "4", "Make it jazzier"]
    assert main([*common, "--out", str(tmp_path / "kept.wav"), "--edit-strength", "0.5"]) == 0
    assert main([*common, "--out", str(tmp_path / "new.wav"), "--source", "ignore"]) == 0
    reference = musicgen.reconstruct([load_audio(song, sr)], 1.5)[0]
    kept, new = (load_audio(tmp_path / n, sr) for n in ("kept.wav", "new.wav"))
    head = int(0.5 * sr)
    assert np.abs(kept[:head] - reference[:head]).max() < 1e-3  # 16-bit WAV rounding
    assert np.abs(new[:head] - reference[:head]).max() > 1e-2
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "x.wav"), "--edit-strength", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--edit-strength" in err and len(err.splitlines()) == 1
