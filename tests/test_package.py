"""The package's public face: `from m2ugen import M2UGen, ChatSession, ...` (README)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import m2ugen
from m2ugen.chat import ChatSession, GenerationSettings
from m2ugen.media import load_audio, load_image, load_video, save_audio
from m2ugen.model import M2UGen
from m2ugen.music import MusicSettings


def test_top_level_names_are_the_real_objects():
    from m2ugen import ChatSession as C
    from m2ugen import GenerationSettings as G
    from m2ugen import M2UGen as M
    from m2ugen import MusicSettings as S

    assert (M, C, G, S) == (M2UGen, ChatSession, GenerationSettings, MusicSettings)
    assert (m2ugen.load_audio, m2ugen.load_image, m2ugen.load_video, m2ugen.save_audio) == \
        (load_audio, load_image, load_video, save_audio)
    assert set(m2ugen.__all__) >= {"M2UGen", "ChatSession", "MusicSettings", "M2UGenError"}


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        m2ugen.Nope  # noqa: B018


def test_importing_the_package_or_its_errors_does_not_load_torch():
    code = ("import sys, m2ugen; from m2ugen.errors import ConfigError; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_newcomer_snippet_picture_to_music(tiny_dir, media, monkeypatch):
    """README's promise: a path in, text and a waveform out, settings as keywords."""
    from m2ugen import ChatSession, M2UGen

    monkeypatch.chdir(media)
    picture = next(media.glob("*.png")).name  # a relative path, as a user types it
    chat = ChatSession(M2UGen.from_pretrained(tiny_dir))
    result = chat.send("Compose music for this picture", image=picture, music="always",
                       seconds=1, seed=0, max_new_tokens=8)
    assert isinstance(result.text, str) and result.music is not None
    assert result.music.waveform.shape == (result.music.sample_rate,)
    assert result.inputs_used == ("image",)
    # the path was loaded the way the model's encoders want it: same reply as a loaded image
    again = ChatSession(chat.model).send("Compose music for this picture",
                                         image=m2ugen.load_image(picture), music="always",
                                         seconds=1, seed=0, max_new_tokens=8)
    assert again.token_ids == result.token_ids
    assert (again.music.waveform == result.music.waveform).all()


def test_session_loads_audio_and_video_paths_with_the_models_spec(tiny_model, media):
    from m2ugen.media import load_audio, load_video

    spec = tiny_model.media_spec
    assert spec.sample_rate == tiny_model.encoders["audio"].sample_rate
    song, clip = next(media.glob("*.wav")), next(media.glob("*.mp4"))
    chat = ChatSession(tiny_model)
    chat.send("Describe this", audio=str(song), video=clip, max_new_tokens=2, seed=0)
    assert chat.media["audio"].shape == load_audio(song, sr=spec.sample_rate).shape
    assert chat.media["video"].shape == load_video(clip, num_frames=spec.num_frames).shape


def test_unknown_keyword_option_names_the_valid_ones(tiny_model):
    from m2ugen.errors import ChatError

    with pytest.raises(ChatError, match="unknown option.*temprature.*temperature"):
        ChatSession(tiny_model).send("hi", temprature=0.5)
    with pytest.raises(ChatError, match="unknown option.*secs"):
        ChatSession(tiny_model).stream("hi", secs=3)
