"""The four music paths end to end: text, image, video → music; audio + instruction → edit."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from m2ugen.chat import ChatSession, GenerationSettings
from m2ugen.cli import main
from m2ugen.errors import ChatError
from m2ugen.music import MusicResult, MusicSettings, rank_candidates, render_music

PATHS = {
    "text": ([], "Generate a calm piano melody."),
    "image": (["--image", "sunset.png"], "Compose music for this picture"),
    "video": (["--video", "shapes.mp4"], "Generate music for this video"),
    "edit": (["--audio", "piano_120bpm.wav"], "Make it jazzier and add drums"),
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("preset", ["tiny", "tiny-audioldm2"])
def test_cli_writes_music_of_the_requested_length(preset, path, media, tmp_path, capsys,
                                                  tiny_dir, tiny_audioldm2_dir):
    flags, prompt = PATHS[path]
    flags = [f if not f.endswith((".png", ".mp4", ".wav")) else str(media / f) for f in flags]
    out = tmp_path / "out.wav"
    code = main(["chat", "--model", preset, *flags, "--music", "always", "--seconds", "2",
                 "--steps", "3", "--seed", "0", "--max-new-tokens", "8", "--out", str(out),
                 prompt])
    _, err = capsys.readouterr()
    assert code == 0, err
    wave, sr = sf.read(out, dtype="float32")
    decoder_rate = 32000 if preset == "tiny" else 16000
    assert sr == decoder_rate
    frame = sr / 50
    assert abs(len(wave) - 2 * sr) <= frame
    assert np.isfinite(wave).all() and np.abs(wave).max() > 1e-3
    assert "wrote" in err and "condition=embedding" in err


def _differ(a: np.ndarray, b: np.ndarray) -> bool:
    """The audio depends on the change. Rendering is bit-exact for equal inputs (asserted
    below), so any difference well above float noise counts; the tiny decoders are quiet
    and the tiny AudioLDM2 reacts only weakly to its conditioning."""
    return bool(np.abs(a - b).max() > 1e-6)


def _session_music(model, settings, **media):
    session = ChatSession(model)
    return session.send("Compose music for this.", settings=GenerationSettings(
        max_new_tokens=6, temperature=0, seed=0), music=settings, **media)


def test_same_inputs_same_audio_and_inputs_steer_it(any_tiny_model, media_arrays):
    s = MusicSettings(music="always", seconds=1.0, steps=3, seed=4)
    a = _session_music(any_tiny_model, s, image=media_arrays["image"])
    b = _session_music(any_tiny_model, s, image=media_arrays["image"])
    np.testing.assert_array_equal(a.music.waveforms, b.music.waveforms)
    c = _session_music(any_tiny_model, s, video=media_arrays["video"])
    assert not torch.equal(a.music.conditioning, c.music.conditioning)
    assert _differ(a.music.waveform, c.music.waveform)
    assert a.inputs_used == ("image",) and a.music.sample_rate == any_tiny_model.decoder.sample_rate


def test_changed_projector_output_changes_audio(tiny_model, media_arrays):
    s = MusicSettings(music="always", seconds=1.0, seed=4)
    a = _session_music(tiny_model, s, audio=media_arrays["audio"])
    bias = tiny_model.projector.out.bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias.add_(0.5)
        b = _session_music(tiny_model, s, audio=media_arrays["audio"])
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert _differ(a.music.waveform, b.music.waveform)


def test_text_and_embedding_conditioning_differ(tiny_model):
    session = ChatSession(tiny_model)
    result = session.send("Generate a calm piano melody.",
                          settings=GenerationSettings(max_new_tokens=12, temperature=0, seed=0))
    emb = session.render(result, MusicSettings(music="always", seconds=1.0, seed=2))
    txt = session.render(result, MusicSettings(music="always", condition="text", seconds=1.0,
                                               seed=2))
    assert emb.condition == "embedding" and txt.condition == "text"
    assert _differ(emb.waveform, txt.waveform)


def test_music_modes_and_candidates(tiny_model):
    session = ChatSession(tiny_model)
    result = session.send("Describe this.",
                          settings=GenerationSettings(max_new_tokens=6, temperature=0, seed=0))
    assert not result.has_audio_tokens
    assert session.render(result, MusicSettings(music="auto")) is None
    assert session.render(result, MusicSettings(music="never")) is None
    multi = session.render(result, MusicSettings(music="always", seconds=0.5, seed=1,
                                                 num_candidates=2))
    assert multi.waveforms.shape == (2, 16000)
    assert _differ(multi.waveforms[0], multi.waveforms[1])
    # forcing the tokens puts them into the conversation the model sees next
    assert session.history[-1].assistant.endswith("[AUD7]") and result.has_audio_tokens
    with pytest.raises(ChatError, match="seconds"):
        session.render(result, MusicSettings(music="always", seconds=0))


def test_scheduler_flag_reaches_audioldm2(tiny_audioldm2_dir, tiny_audioldm2_model, tmp_path,
                                          capsys):
    """`m2ugen chat --scheduler ddim` renders what the Python API renders with
    scheduler="ddim", and other music than the default DPM-Solver++ at the same steps."""
    waves = {}
    for scheduler in ("ddim", "dpm++"):
        out = tmp_path / f"{scheduler}.wav"
        code = main(["chat", "--model", str(tiny_audioldm2_dir), "--music", "always",
                     "--seconds", "0.3", "--steps", "2", "--scheduler", scheduler,
                     "--dtype", "fp32", "--seed", "0", "--max-new-tokens", "3",
                     "--out", str(out), "hi"])
        assert code == 0, capsys.readouterr().err
        waves[scheduler] = sf.read(out, dtype="float32")[0]
    assert _differ(waves["ddim"], waves["dpm++"])
    result = ChatSession(tiny_audioldm2_model).send(
        "hi", music="always", seconds=0.3, steps=2, scheduler="ddim", seed=0,
        max_new_tokens=3)
    np.testing.assert_allclose(waves["ddim"], result.music.waveform, atol=1e-4)  # 16-bit WAV


def test_an_unknown_scheduler_is_one_line(capsys):
    with pytest.raises(ChatError, match=r"scheduler='pndm': use one of dpm\+\+, ddim"):
        MusicSettings(scheduler="pndm").validate()
    with pytest.raises(SystemExit):
        main(["chat", "--scheduler", "pndm", "hi"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--scheduler: invalid choice: 'pndm'" in err


@pytest.mark.parametrize("field, value, message", [
    ("music", "sometimes", "music='sometimes': use one of auto, always, never"),
    ("seconds", 0, "seconds must be a finite number > 0 and <= 300, got 0"),
    ("steps", 0, "steps must be an integer >= 1 and <= 1000, got 0"),
    ("num_candidates", 0, "num_candidates must be an integer >= 1 and <= 16, got 0"),
    ("num_candidates", 17, "num_candidates must be an integer >= 1 and <= 16, got 17"),
])
def test_music_settings_name_the_bad_field(field, value, message):
    """Each bad value is refused with the field's own name (the CLI and the app show it)."""
    with pytest.raises(ChatError) as info:
        MusicSettings(**{field: value}).validate()
    assert str(info.value) == message


def test_music_settings_bounds_that_hold():
    s = MusicSettings(steps=1, num_candidates=16, seconds=0.5)
    s.validate()
    assert (s.steps, s.num_candidates) == (1, 16)


def test_a_render_without_seed_draws_one(tiny_model):
    session = ChatSession(tiny_model)
    result = session.send("Hi", settings=GenerationSettings(max_new_tokens=2, temperature=0,
                                                            seed=0))
    music = session.render(result, MusicSettings(music="always", seconds=0.2))
    assert isinstance(music.seed, int) and 0 <= music.seed < 2 ** 31


class _ListJudge:
    """A judge (the `Judge` protocol) that hands back plain Python floats, as any judge
    may: `rank_candidates` is what is tested, not a scoring model."""

    name, ref = "fixed", "fixed-scores"

    def __init__(self, scores: list[float]) -> None:
        self.scores, self.calls = scores, []

    def score(self, text, waveforms, sample_rate):
        self.calls.append((text, waveforms.shape, sample_rate))
        return self.scores


def test_ranking_is_best_first_float32_and_ties_keep_render_order():
    """Scores come back as the MusicResult promises, (candidates,) float32 descending,
    whatever type the judge returns; equal scores keep their render order."""
    waves = np.arange(4, dtype=np.float32)[:, None] * np.ones((4, 8), np.float32)
    judge = _ListJudge([0.25, 0.75, 0.25, 0.5])
    result = rank_candidates(MusicResult(waves, 16000, "embedding", 0.5, 0), judge, "rain")
    assert judge.calls == [("rain", (4, 8), 16000)]
    assert result.ranking == (1, 3, 0, 2)
    assert result.scores.dtype == np.float32
    np.testing.assert_array_equal(result.scores, [0.75, 0.5, 0.25, 0.25])
    np.testing.assert_array_equal(result.waveforms[:, 0], [1, 3, 0, 2])
    assert (result.judge, result.judged_text) == ("fixed-scores", "rain")


@pytest.mark.parametrize("against, other", [("request", "reply"), ("reply", "request")])
def test_an_empty_judged_text_is_refused_before_rendering_and_names_the_other(
        tiny_model, against, other):
    """Reranking against an empty text is refused before anything renders (the judge is
    never asked), and the error points to the other text, which is not empty."""
    judge = _ListJudge([0.0, 1.0])
    judge.name = "clap"
    settings = MusicSettings(rerank="clap", rerank_against=against, num_candidates=2,
                             seconds=0.2, seed=0)
    texts = {"request": "", "reply": "A calm piano piece."}
    if against == "reply":
        texts = {"request": "Some calm piano, please.", "reply": "  "}
    hidden = torch.zeros(8, tiny_model.config.llm_dim)
    with pytest.raises(ChatError) as info:
        render_music(tiny_model, hidden, texts["reply"], settings, judge,
                     request=texts["request"])
    assert f"rerank_against={other}" in str(info.value)
    assert f"rerank_against={against}" in str(info.value)
    assert judge.calls == []
