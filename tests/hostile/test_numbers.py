"""Non-finite, out-of-range and wrongly typed numbers in every face: the CLI options, the
training YAML and its key=value overrides, the dataset spec, the app's API and the Python
settings objects. Each is one line naming the option as the user wrote it, exit 2, no
traceback (NaN in particular: `nan > 0` is False, so range checks alone let it through).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from m2ugen.chat import GenerationSettings
from m2ugen.errors import ChatError, ConfigError, M2UGenError
from m2ugen.music import MusicSettings

NAN, INF = float("nan"), float("inf")
REPO = Path(__file__).resolve().parents[2]


# ---- m2ugen chat -----------------------------------------------------------------------
@pytest.mark.parametrize("flag, value", [
    ("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "-inf"),
    ("--temperature", "-0.5"), ("--temperature", "1e-300"),
    ("--top-p", "nan"), ("--top-p", "0"), ("--top-p", "1.5"), ("--top-p", "inf"),
    ("--max-new-tokens", "0"), ("--max-new-tokens", "-3"),
    ("--seed", "-1"), ("--seed", str(2**64)), ("--seed", "1" + "0" * 30),
    ("--seconds", "nan"), ("--seconds", "inf"), ("--seconds", "0"), ("--seconds", "301"),
    ("--guidance", "nan"), ("--guidance", "inf"), ("--guidance", "-1"), ("--guidance", "101"),
    ("--steps", "0"), ("--steps", "1001"),
    ("--num-candidates", "0"), ("--num-candidates", "17"),
])
def test_chat_option_out_of_range(tiny_dir, tmp_path, one_line_error, flag, value):
    line = one_line_error(["chat", "--model", str(tiny_dir), "--music", "always",
                           "--max-new-tokens", "2", "--out", str(tmp_path / "m.wav"),
                           f"{flag}={value}", "hi"])
    assert flag in line  # named as typed, not as the Python field (top_p)


@pytest.mark.parametrize("flag, value", [
    ("--seed", "abc"), ("--temperature", "warm"), ("--max-new-tokens", "1.5"),
])
def test_chat_option_not_a_number_is_one_line_not_a_usage_block(one_line_error, flag, value):
    line = one_line_error(["chat", flag, value, "hi"])
    assert flag in line and "usage:" not in line


@pytest.mark.parametrize("argv, flag", [
    (["make-tiny", "{tmp}/t", "--seed", "-1"], "--seed"),
    (["make-tiny", "{tmp}/t", "--seed", str(2**64)], "--seed"),
    (["synth-data", "{tmp}/d", "--seed", "-3"], "--seed"),
    (["synth-data", "{tmp}/d", "--n-audio", "0"], "--n-audio"),
    (["synth-data", "{tmp}/d", "--n-images", "-1"], "--n-images"),
    (["synth-data", "{tmp}/d", "--n-videos", "1000000"], "--n-videos"),
])
def test_other_commands_numbers(tmp_path, one_line_error, argv, flag):
    line = one_line_error([a.format(tmp=tmp_path) for a in argv])
    assert flag in line
    assert not (tmp_path / "t").exists() and not (tmp_path / "d").exists()  # refused first


# ---- gradio_app.py (= m2ugen app) --------------------------------------------------------
@pytest.mark.parametrize("argv, flag", [
    (["--port", "0"], "--port"), (["--port", "70000"], "--port"), (["--port", "-1"], "--port"),
    (["--max-upload-mb", "nan"], "--max-upload-mb"), (["--max-upload-mb", "0"], "--max-upload-mb"),
    (["--max-upload-mb", "-5"], "--max-upload-mb"), (["--max-upload-mb", "inf"], "--max-upload-mb"),
    (["--port", "http"], "--port"),
    (["--concurrency", "0"], "--concurrency"), (["--concurrency", "-2"], "--concurrency"),
    (["--concurrency", "1.5"], "--concurrency"), (["--concurrency", "nan"], "--concurrency"),
])
def test_app_launcher_numbers(gradio_app, capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_:  # argparse's own refusal exits
        raise SystemExit(gradio_app.main(["--model", "no-such-model", *argv]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and flag in err, err
    assert err.startswith("m2ugen: error: ")


# ---- training config: YAML and key=value overrides -------------------------------------
BAD_SETTINGS = [
    ("lr", "nan"), ("lr", ".inf"), ("lr", "1e400"), ("lr", "0"), ("lr", "-1"), ("lr", "abc"),
    ("min_lr", "-1"), ("min_lr", "1.0"), ("weight_decay", ".nan"), ("weight_decay", "-1"),
    ("clip", "inf"), ("clip", "-1"), ("betas", "[.nan, 0.9]"), ("betas", "[1.5, 0.9]"),
    ("betas", "[0.9]"), ("batch_size", "0"), ("batch_size", "true"), ("batch_size", "2.5"),
    ("batch_size", "x"), ("grad_accum", "0"), ("max_steps", "-1"), ("warmup_steps", "-1"),
    ("warmup_steps", "100000"), ("save_every", "0"), ("log_every", "0"), ("max_len", "0"),
    ("num_workers", "-1"), ("num_workers", "1000000"), ("seed", "-1"), ("seed", str(2**64)),
    ("stop_after", "0"), ("stage", "4"), ("stage", "true"), ("progress", "'no'"),
    ("tensorboard", "'false'"), ("group_by_length", "1"), ("data", "''"), ("out", "''"),
    ("feature_cache", "''"), ("device", "tpu"), ("device", "meta"),
]


@pytest.mark.parametrize("key, value", BAD_SETTINGS)
def test_train_override(tmp_path, one_line_error, key, value):
    line = one_line_error(["train", "--config", str(REPO / "configs/stage1.yaml"),
                           f"out={tmp_path / 'run'}", f"{key}={value}"])
    assert f"{key} (command line)" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value", BAD_SETTINGS)
def test_train_yaml(tmp_path, key, value):
    from m2ugen.training.config import load_train_config

    text = (REPO / "configs/stage1.yaml").read_text()
    path = tmp_path / "stage.yaml"
    path.write_text(f"{text}\n{key}: {value}\n")
    with pytest.raises(ConfigError) as e:
        load_train_config(path)
    assert f"{key} (in {path})" in str(e.value) and "\n" not in str(e.value)


def test_train_config_normalises_what_it_accepts():
    from m2ugen.training.config import load_train_config

    cfg = load_train_config(REPO / "configs/stage1.yaml", ["lr=1e-4", "seed=7", "clip=0"])
    assert (cfg.lr, cfg.seed, cfg.clip) == (1e-4, 7, 0.0)


# ---- dataset spec ------------------------------------------------------------------------
@pytest.mark.parametrize("weight", ["0", "-1", "1000000000", "true", "2.5", ".nan", "'3'"])
def test_dataset_weight(tmp_path, weight):
    from m2ugen.data.spec import load_spec

    spec = tmp_path / "dataset.yaml"
    spec.write_text(f"stage1:\n  - {{format: mucaps, file: caps.json, weight: {weight}}}\n")
    with pytest.raises(ConfigError, match=r"'weight' must be an integer from 1 to 1000"):
        load_spec(spec)


# ---- the app's API: values as gradio delivers them ------------------------------------
APP_OK: dict[str, Any] = dict(temperature=0.6, top_p=0.8, max_new_tokens=16, music="never",
                              seconds=1, guidance=3.5, steps=0, condition="embedding", seed=0)


@pytest.mark.parametrize("field, value, label", [
    ("temperature", NAN, "Temperature"), ("temperature", INF, "Temperature"),
    ("temperature", "abc", "Temperature"), ("temperature", None, "Temperature"),
    ("temperature", 5.0, "Temperature"), ("temperature", True, "Temperature"),
    ("top_p", NAN, "Top-p (top_p)"), ("top_p", 0.0, "Top-p (top_p)"),
    ("top_p", [0.5], "Top-p (top_p)"),
    ("max_new_tokens", NAN, "Max new tokens"), ("max_new_tokens", 12.5, "Max new tokens"),
    ("max_new_tokens", 10**9, "Max new tokens"),
    ("seconds", NAN, "Music seconds (seconds)"), ("seconds", -INF, "Music seconds (seconds)"),
    ("seconds", 301, "Music seconds (seconds)"),
    ("guidance", NAN, "Guidance"), ("guidance", -1, "Guidance"),
    ("steps", NAN, "Decoder steps (steps)"), ("steps", 2.5, "Decoder steps (steps)"),
    ("steps", 10**6, "Decoder steps (steps)"),
    ("seed", NAN, "Seed"), ("seed", INF, "Seed"), ("seed", -INF, "Seed"), ("seed", 1e30, "Seed"),
    ("seed", 2.5, "Seed"), ("seed", "x", "Seed"),
    ("music", 3, "Music"), ("music", "loud", "Music"), ("condition", None, "Condition"),
    ("edit_strength", NAN, "Edit strength"), ("edit_strength", 0.0, "Edit strength"),
    ("edit_strength", "x", "Edit strength"), ("hear_source", None, "Hear the source"),
    ("hear_source", "yes", "Hear the source"),
])
def test_app_settings_from_the_api(field, value, label):
    from m2ugen.app import make_settings

    with pytest.raises(ChatError) as e:
        make_settings(**{**APP_OK, field: value})
    assert str(e.value).startswith(label) or str(e.value).startswith(f"{label}=")
    assert "\n" not in str(e.value)


def test_app_random_seed_and_default_steps_still_work():
    from m2ugen.app import make_settings

    gen, mus = make_settings(**{**APP_OK, "seed": -1, "steps": 0, "max_new_tokens": 16.0})
    assert (gen.seed, mus.seed, mus.steps, gen.max_new_tokens) == (None, None, None, 16)
    gen, _ = make_settings(**{**APP_OK, "seed": None})
    assert gen.seed is None
    gen, mus = make_settings(**{**APP_OK, "seed": 7.0, "steps": 25.0})
    assert (gen.seed, mus.steps) == (7, 25) and isinstance(gen.seed, int)


def test_app_shows_a_bad_setting_in_the_chat(tiny_model, tmp_path):
    from m2ugen.app import AssistantApp

    app = AssistantApp(tiny_model, media_root=tmp_path)
    *_, (shown, _, state) = app.respond({"text": "hi", "files": []}, None,
                                        **{**APP_OK, "temperature": NAN})
    assert shown[-1]["role"] == "assistant" and shown[-1]["content"].startswith("⚠️ Temperature")
    assert state.session.history == []  # nothing was generated


def test_app_http_api_gets_our_message_not_a_gradio_error(tiny_model):
    """Through the real HTTP API: values gradio's own preprocessing used to choke on (a
    string for a slider, null, a float seed) come back as one chat message."""
    import socket

    from gradio_client import Client

    from m2ugen.app import build_app, launch

    demo = build_app(tiny_model, examples_dir=None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(demo, port=port, prevent_thread_lock=True, quiet=True, examples_dir=None)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for field, value, label in (("temperature", "abc", "Temperature"),
                                    ("top_p", None, "Top-p"), ("seed", "x", "Seed"),
                                    ("seconds", 1e9, "Music seconds")):
            shown, _ = client.predict({"text": "hi", "files": []},
                                      *{**APP_OK, field: value}.values(), api_name="/chat")
            [reply] = shown[-1]["content"]
            assert reply["text"].startswith(f"⚠️ {label}"), (field, reply)
    finally:
        demo.close()


# ---- the Python API: the settings objects every face calls -----------------------------
@pytest.mark.parametrize("kwargs", [
    dict(temperature=NAN), dict(temperature=-INF), dict(top_p=NAN), dict(max_new_tokens=NAN),
    dict(max_new_tokens=True), dict(seed=-1), dict(seed=2**64), dict(seed=1.5),
])
def test_generation_settings(kwargs):
    field = next(iter(kwargs))
    with pytest.raises(ChatError, match=f"^{field}"):
        GenerationSettings(**kwargs).validate()


@pytest.mark.parametrize("kwargs", [
    dict(seconds=NAN), dict(seconds=INF), dict(guidance=NAN), dict(guidance=INF),
    dict(steps=NAN), dict(steps=0), dict(seed=-5), dict(num_candidates=NAN),
    dict(num_candidates=2.5), dict(music=None), dict(condition=["text"]),
])
def test_music_settings(kwargs):
    field = next(iter(kwargs))
    with pytest.raises(ChatError, match=f"^{field}"):
        MusicSettings(**kwargs).validate()


def test_session_send_refuses_nan_before_generating(tiny_model):
    from m2ugen.chat import ChatSession

    session = ChatSession(tiny_model)
    with pytest.raises(M2UGenError, match="temperature"):
        session.send("hi", settings=GenerationSettings(temperature=NAN, max_new_tokens=2))
    with pytest.raises(M2UGenError, match="guidance"):
        session.send("hi", music=MusicSettings(guidance=math.inf),
                     settings=GenerationSettings(max_new_tokens=2))
    assert session.history == []
