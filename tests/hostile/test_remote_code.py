"""No code from a model directory runs unless the user opts in (--trust-remote-code).

Each test builds a hostile copy of a tiny component: its config gains an `auto_map` (or a
custom pipeline component) naming `evil.py`, a file next to it that creates a marker file
when imported. Without the opt-in the marker must never appear and the user gets one line;
with it, the remote path is taken (the marker appears). Everything stays offline.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from m2ugen.cli import main
from m2ugen.errors import ConfigError, M2UGenError

EVIL = """from pathlib import Path
Path({marker!r}).write_text("remote code ran")
raise ImportError("evil module stops here")
"""


@pytest.fixture(autouse=True)
def modules_cache(tmp_path, monkeypatch):
    """transformers copies remote code into its modules cache: keep that under tmp_path."""
    from transformers import dynamic_module_utils

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # it appends the cache to sys.path


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "remote-code-ran"


def plant(config: Path, marker: Path, auto_map: dict, drop: tuple[str, ...] = (),
          **updates) -> None:
    """Point `config`'s auto_map at an evil.py beside it (which creates `marker`)."""
    data = json.loads(config.read_text())
    for key in drop:
        data.pop(key, None)
    data.update(updates, auto_map=auto_map)
    config.write_text(json.dumps(data))
    (config.parent / "evil.py").write_text(EVIL.format(marker=str(marker)))


def hostile_mert(tiny_dir: Path, tmp_path: Path, marker: Path, switch: str) -> Path:
    """A model directory whose MERT config pushes loading to the remote-code path."""
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    plant(model / "mert" / "config.json", marker,
          {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
          model_type="mert_model", **{switch: True})
    return model


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("m2ugen: error: ") and "Traceback" not in err


# ---- MERT: the remote-code path needs the opt-in -----------------------------------------
@pytest.mark.parametrize("switch", ["feature_extractor_cqt", "deepnorm"])
def test_chat_refuses_mert_remote_code_without_the_flag(tiny_dir, tmp_path, marker, capsys,
                                                         switch):
    model = hostile_mert(tiny_dir, tmp_path, marker, switch)
    code, err = run(capsys, "chat", "--model", str(model), "--music", "never", "hi")
    assert code == 2 and one_line(err), err
    assert f"{model / 'mert' / 'config.json'}: this MERT config enables {switch}" in err
    assert "--trust-remote-code" in err
    assert not marker.exists()


def test_chat_with_the_flag_takes_the_remote_path(tiny_dir, tmp_path, marker, capsys):
    model = hostile_mert(tiny_dir, tmp_path, marker, "feature_extractor_cqt")
    code, err = run(capsys, "chat", "--model", str(model), "--trust-remote-code",
                    "--music", "never", "hi")
    assert marker.read_text() == "remote code ran"  # the opt-in reached the model's code
    assert code == 2 and one_line(err) and "evil module stops here" in err


def test_auto_map_alone_loads_natively_and_runs_nothing(tiny_dir, tmp_path, marker):
    from m2ugen.modules.encoders import load_mert

    mert = tmp_path / "mert"
    shutil.copytree(tiny_dir / "mert", mert)
    plant(mert / "config.json", marker, {"AutoModel": "evil.EvilModel"},
          model_type="mert_model", feature_extractor_cqt=False, deepnorm=False)
    _, how = load_mert(str(mert), torch.float32, trust_remote_code=True)
    assert how == "native HubertModel" and not marker.exists()


def test_from_pretrained_keyword_and_app_flag(tiny_dir, tmp_path, marker):
    from m2ugen.app import build_app
    from m2ugen.cli import build_parser
    from m2ugen.model import M2UGen

    model = hostile_mert(tiny_dir, tmp_path, marker, "deepnorm")
    with pytest.raises(ConfigError, match="--trust-remote-code"):
        M2UGen.from_pretrained(model)
    with pytest.raises(ConfigError, match="--trust-remote-code"):
        build_app(model, examples_dir=None)
    assert not marker.exists()
    # `m2ugen app` (and gradio_app.py, which launches it) takes the opt-in; off by default
    assert build_parser().parse_args(["app", "--trust-remote-code"]).trust_remote_code
    assert not build_parser().parse_args(["app"]).trust_remote_code
    with pytest.raises(ConfigError, match="evil module stops here"):
        build_app(model, trust_remote_code=True, examples_dir=None)
    assert marker.exists()


def test_training_config_key_is_the_opt_in(tiny_dir, tmp_path, marker, capsys):
    from m2ugen.data.synth import write_synthetic_dataset

    model = hostile_mert(tiny_dir, tmp_path, marker, "feature_extractor_cqt")
    # valid data: the data is read first, so the model load is what fails
    data = write_synthetic_dataset(tmp_path / "synth", n_audio=2, n_images=1, n_videos=1)
    base = ["cache-features", "--config", "configs/stage1.yaml", f"model={model}",
            f"data={data}", f"feature_cache={tmp_path / 'cache'}", "device=cpu"]
    code, err = run(capsys, *base)
    assert code == 2 and one_line(err) and "trust_remote_code=true" in err
    code, err = run(capsys, *base, "trust_remote_code=maybe")
    assert code == 2 and one_line(err) and "trust_remote_code must be true or false" in err
    assert not marker.exists()
    code, err = run(capsys, *base, "trust_remote_code=true")
    assert code == 2 and marker.exists()


# ---- other components: an auto_map is refused (or ignored), never run, never asked -------
def test_tokenizer_auto_map_is_refused_without_a_prompt(tiny_dir, tmp_path, marker, capsys,
                                                        monkeypatch):
    asked = []
    monkeypatch.setattr("builtins.input", lambda *a: asked.append(a) or "y")
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    plant(model / "tokenizer" / "tokenizer_config.json", marker,
          {"AutoTokenizer": ["evil.EvilTokenizer", None]}, drop=("tokenizer_class",))
    code, err = run(capsys, "chat", "--model", str(model), "--music", "never", "hi")
    assert code == 2 and one_line(err), err
    assert "tokenizer" in err and "needs Python code shipped with the model" in err
    assert not asked and not marker.exists()  # transformers' y/N prompt would have run it


@pytest.mark.parametrize("component, config, auto_map, drop", [
    ("vit", "preprocessor_config.json", {"AutoImageProcessor": "evil.EvilProcessor"},
     ("image_processor_type",)),
    ("vivit", "config.json", {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
     ()),
    ("llm", "config.json", {"AutoConfig": "evil.EvilConfig",
                            "AutoModelForCausalLM": "evil.EvilModel"}, ()),
])
def test_encoder_and_llm_auto_maps_never_run(tiny_dir, tmp_path, marker, monkeypatch,
                                             component, config, auto_map, drop):
    from m2ugen.model import M2UGen

    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("prompted for remote code"))
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    plant(model / component / config, marker, auto_map, drop=drop)
    M2UGen.from_pretrained(model, trust_remote_code=True)  # the opt-in covers MERT only
    assert not marker.exists()


@pytest.mark.parametrize("config, auto_map, drop", [
    ("processor_config.json", {"AutoProcessor": "evil.EvilProcessor"}, ("processor_class",)),
    ("tokenizer_config.json", {"AutoTokenizer": ["evil.EvilTokenizer", None]},
     ("tokenizer_class", "processor_class")),
])
def test_musicgen_processor_auto_map_never_runs(tiny_dir, tmp_path, marker, monkeypatch,
                                                config, auto_map, drop):
    from m2ugen.modules.decoders import load_decoder

    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("prompted for remote code"))
    decoder = tmp_path / "musicgen"
    shutil.copytree(tiny_dir / "musicgen", decoder)
    plant(decoder / config, marker, auto_map, drop=drop)
    try:
        load_decoder("musicgen", str(decoder), torch.device("cpu"), torch.float32)
    except ConfigError as e:  # refused is fine too, as long as it is one line
        assert "\n" not in str(e) and "needs Python code" in str(e)
    assert not marker.exists()


def test_audioldm2_custom_component_is_refused(tiny_audioldm2_dir, tmp_path, marker):
    from m2ugen.modules.decoders import load_decoder

    pipe = tmp_path / "audioldm2"
    shutil.copytree(tiny_audioldm2_dir / "audioldm2", pipe)
    index = json.loads((pipe / "model_index.json").read_text())
    index["vocoder"] = ["evil", "EvilVocoder"]  # diffusers' custom component: vocoder/evil.py
    (pipe / "model_index.json").write_text(json.dumps(index))
    (pipe / "vocoder" / "evil.py").write_text(EVIL.format(marker=str(marker)))
    with pytest.raises(ConfigError, match="needs Python code shipped with the model") as e:
        load_decoder("audioldm2", str(pipe), torch.device("cpu"), torch.float32)
    assert "\n" not in str(e.value) and not marker.exists()


# ---- datasets_gen: --model / --encoder / --chat-model / --captioner ----------------------
def test_datasets_gen_music_embedder_needs_the_flag(tiny_dir, tmp_path, marker):
    from datasets_gen.common.embed import MusicEmbedder

    model = hostile_mert(tiny_dir, tmp_path, marker, "feature_extractor_cqt")
    with pytest.raises(M2UGenError, match="--trust-remote-code"):
        MusicEmbedder(str(model / "mert"), "cpu")
    with pytest.raises(M2UGenError, match="--trust-remote-code"):
        MusicEmbedder(str(model), "cpu")  # a model directory: its MERT is used
    assert not marker.exists()
    with pytest.raises(M2UGenError, match="evil module stops here"):
        MusicEmbedder(str(model / "mert"), "cpu", trust_remote_code=True)
    assert marker.exists()


def test_datasets_gen_chat_llm_needs_the_flag(tmp_path, marker):
    from datasets_gen.common.chat_llm import ChatLLM
    from datasets_gen.common.synthetic import build_tiny_chat_llm

    llm = build_tiny_chat_llm(tmp_path / "chat")
    plant(llm / "config.json", marker,
          {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
          model_type="evil_lm")
    with pytest.raises(M2UGenError, match="rerun with --trust-remote-code") as e:
        ChatLLM(str(llm), "cpu")
    assert "\n" not in str(e.value) and not marker.exists()
    with pytest.raises(ImportError, match="evil module stops here"):
        ChatLLM(str(llm), "cpu", trust_remote_code=True)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["image", "video"])
def test_datasets_gen_captioners_never_run_it_unasked(tmp_path, marker, monkeypatch, kind):
    from datasets_gen.common import synthetic
    from datasets_gen.common.captioners import ImageCaptioner, VideoCaptioner

    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("prompted for remote code"))
    build = synthetic.build_tiny_blip if kind == "image" else synthetic.build_tiny_video_captioner
    cap = build(tmp_path / kind)
    plant(cap / "tokenizer_config.json", marker, {"AutoTokenizer": ["evil.EvilTok", None]},
          drop=("tokenizer_class",))
    if kind == "image":  # BLIP's config names its tokenizer class: that one is used
        ImageCaptioner(str(cap), "cpu")
    else:  # nothing built-in to fall back on: refused in one line
        with pytest.raises(M2UGenError, match="rerun with --trust-remote-code") as e:
            VideoCaptioner(str(cap), "cpu")
        assert "\n" not in str(e.value)
    assert not marker.exists()


def test_every_model_loading_step_takes_the_flag():
    import importlib

    from datasets_gen.common.runner import parser_for

    steps = ["MUCaps.03_caption", "MUEdit.02_pairs", "MUEdit.03_caption",
             "MUEdit.04_instructions", "MUImage.02_caption_music", "MUImage.03_caption_images",
             "MUImage.04_instructions", "MUVideo.02_caption_music", "MUVideo.03_caption_videos",
             "MUVideo.04_instructions"]
    for name in steps:
        step = importlib.import_module(f"datasets_gen.{name}").STEP
        args = parser_for(step).parse_args(["--out", "w", "--trust-remote-code"])
        assert args.trust_remote_code, name
        assert not parser_for(step).parse_args(["--out", "w"]).trust_remote_code
