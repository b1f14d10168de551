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


def test_newcomer_snippet_picture_to_music(tiny_dir, media):
    from m2ugen import ChatSession, M2UGen

    chat = ChatSession(M2UGen.from_pretrained(tiny_dir))
    image = m2ugen.load_image(next(media.glob("*.png")))
    result = chat.send("Compose music for this picture", image=image,
                       music=m2ugen.MusicSettings(music="always", seconds=1, seed=0))
    assert isinstance(result.text, str) and result.music is not None
    assert result.music.waveform.shape == (result.music.sample_rate,)
    assert "image" in result.inputs_used
