"""datasets_gen.common.audio_language: which music captioner a --model names (by its
config), and the transformers audio-language captioner on a tiny random Qwen2-Audio."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # datasets_gen lives beside the m2ugen package, not inside it
    sys.path.insert(0, str(ROOT))

from datasets_gen.common import synthetic  # noqa: E402
from datasets_gen.common.audio_language import (  # noqa: E402
    AudioLanguageCaptioner,
    captioner_kind,
    music_captioner,
)
from datasets_gen.common.captioners import MusicCaptioner  # noqa: E402
from datasets_gen.common.records import DatasetGenError  # noqa: E402
from m2ugen.errors import M2UGenError  # noqa: E402
from m2ugen.media import save_audio  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("music_captioners")
    return {"audio": synthetic.build_tiny_audio_captioner(root / "audio_captioner"),
            "m2ugen": synthetic.build_tiny_music_captioner(root / "m2ugen"),
            "chat": synthetic.build_tiny_chat_llm(root / "chat")}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """Clips of 2, 1 and 6 s (different lengths pad differently in a batch)."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate((2, 1, 6)):
        path = root / f"c{i}.wav"
        save_audio(path, (0.1 * rng.standard_normal(16000 * seconds)).astype(np.float32), 16000)
        paths.append(path)
    return paths


def test_the_kind_comes_from_the_config_not_the_name(models, tmp_path):
    assert captioner_kind(str(models["audio"])) == "transformers"
    assert captioner_kind(str(models["m2ugen"])) == "m2ugen"
    assert captioner_kind("tiny") == "m2ugen"  # m2ugen's own preset names
    # swap the folders' names: each is still what its config says
    qwen_named = shutil.copytree(models["m2ugen"], tmp_path / "Qwen2-Audio-7B-Instruct")
    m2ugen_named = shutil.copytree(models["audio"], tmp_path / "m2ugen-tiny")
    assert captioner_kind(str(qwen_named)) == "m2ugen"
    assert captioner_kind(str(m2ugen_named)) == "transformers"


@pytest.mark.parametrize("case,message", [
    ("chat", "a transformers 'llama' model, not an audio-language model"),
    ("empty", "the folder has neither m2ugen.json (an m2ugen model) nor config.json"),
    ("file", "is a file"),
    ("/no/such/dir", "no such directory"),
])
def test_what_is_not_a_music_captioner_is_a_one_line_error(models, tmp_path, case, message):
    name = {"chat": str(models["chat"]), "empty": str(tmp_path),
            "file": str(models["audio"] / "config.json")}.get(case, case)
    with pytest.raises(DatasetGenError, match=re.escape(message)) as e:
        captioner_kind(name)
    assert "\n" not in str(e.value)


def test_a_hub_id_not_in_the_cache_offline_is_a_one_line_error():
    with pytest.raises(M2UGenError, match="'nobody/no-such-audio-model' could not be loaded"):
        captioner_kind("nobody/no-such-audio-model")


def test_batched_captions_equal_one_at_a_time_and_a_bad_file_fails_alone(models, clips,
                                                                        tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav")
    captioner = AudioLanguageCaptioner(str(models["audio"]), "cpu", max_new_tokens=6)
    batch = captioner([clips[0], broken, clips[1], clips[2]])
    assert isinstance(batch[1], Exception) and "broken.wav" in str(batch[1])
    alone = [captioner([c])[0] for c in clips]
    assert all(isinstance(c, str) and c for c in alone)
    assert not any("Describe the music" in c for c in alone)  # only the new tokens
    assert [batch[0], batch[2], batch[3]] == alone
    # the audio reaches the model: another clip, another greedy caption
    assert len(set(alone)) > 1


def test_clip_seconds_is_capped_at_the_models_window(models, clips):
    # the tiny feature extractor's window is 4 s (Qwen2-Audio's: 30 s)
    captioner = AudioLanguageCaptioner(str(models["audio"]), "cpu", clip_seconds=30.0)
    assert captioner.sample_rate == 16000 and captioner.clip_seconds == 4.0
    assert len(captioner.load(clips[2])) == 4 * 16000
    short = AudioLanguageCaptioner(str(models["audio"]), "cpu", clip_seconds=1.5)
    assert len(short.load(clips[2])) == 24000


def test_music_captioner_loads_each_kind_in_the_dtype_asked(models, clips):
    import torch

    alm = music_captioner(str(models["audio"]), "cpu", "bfloat16", max_new_tokens=4)
    assert isinstance(alm, AudioLanguageCaptioner)
    assert alm.model.dtype == torch.bfloat16
    assert all(isinstance(c, str) and c for c in alm(clips[:2]))
    assert music_captioner(str(models["audio"]), "cpu").model.dtype == torch.float32  # auto
    m2ugen = music_captioner(str(models["m2ugen"]), "cpu", "bfloat16", max_new_tokens=4)
    assert isinstance(m2ugen, MusicCaptioner)
    assert next(m2ugen.model.llm.parameters()).dtype == torch.bfloat16


EVIL = "open({marker!r}, 'w').write('ran')\nraise ImportError('evil module stops here')\n"


def plant(config: Path, marker: Path, auto_map: dict, **updates) -> None:
    """Point `config`'s auto_map at an evil.py beside it (which creates `marker`)."""
    data = {**json.loads(config.read_text()), **updates, "auto_map": auto_map}
    config.write_text(json.dumps(data))
    (config.parent / "evil.py").write_text(EVIL.format(marker=str(marker)))


def test_remote_code_in_the_model_runs_only_with_the_flag(models, tmp_path):
    marker = tmp_path / "ran"
    model = shutil.copytree(models["audio"], tmp_path / "evil_model")
    plant(model / "config.json", marker, {"AutoConfig": "evil.EvilConfig"},
          model_type="evil_audio")
    with pytest.raises(M2UGenError, match="rerun with --trust-remote-code") as e:
        captioner_kind(str(model))
    assert "\n" not in str(e.value) and not marker.exists()
    with pytest.raises(ImportError, match="evil module stops here"):
        captioner_kind(str(model), trust_remote_code=True)
    assert marker.exists()


def test_a_processor_auto_map_is_never_run_unasked(models, tmp_path, clips, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("prompted for remote code"))
    marker = tmp_path / "ran"
    model = shutil.copytree(models["audio"], tmp_path / "evil_processor")
    plant(model / "processor_config.json", marker, {"AutoProcessor": "evil.EvilProcessor"})
    captioner = AudioLanguageCaptioner(str(model), "cpu", max_new_tokens=3)
    assert type(captioner.processor).__name__ == "Qwen2AudioProcessor"  # the native one
    assert isinstance(captioner(clips[:1])[0], str) and not marker.exists()


def test_the_prompt_reaches_the_model(models, clips):
    default = AudioLanguageCaptioner(str(models["audio"]), "cpu", max_new_tokens=6)
    other = AudioLanguageCaptioner(str(models["audio"]), "cpu", max_new_tokens=6,
                                   prompt="Which instruments play?")
    assert "Which instruments play?<|im_end|>" in other._text(clips[0])
    assert default(clips) != other(clips)
