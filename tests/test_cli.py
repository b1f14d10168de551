"""`m2ugen make-tiny` and `m2ugen chat` end to end; user errors exit 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from m2ugen.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_make_tiny_then_chat_with_each_modality(tmp_path, media, capsys):
    model = tmp_path / "tiny"
    code, out, _ = _run(capsys, "make-tiny", str(model), "--seed", "1")
    assert code == 0 and (model / "m2ugen.json").is_file() and (model / "musicgen").is_dir()
    replies = {}
    for flag, name in (("--audio", "piano_120bpm.wav"), ("--image", "sunset.png"),
                       ("--video", "shapes.mp4")):
        code, out, err = _run(capsys, "chat", "--model", str(model), flag, str(media / name),
                              "--seed", "0", "--temperature", "0", "--max-new-tokens", "16",
                              "--music", "never", "Describe this.")
        assert code == 0, err
        assert out.strip(), f"no reply for {flag}"
        replies[flag] = out
    assert len(set(replies.values())) == 3  # each input steers the reply


def test_chat_on_the_tiny_preset_by_name(ckpts, tiny_dir, media, capsys):
    code, out, _ = _run(capsys, "chat", "--model", "tiny", "--audio",
                        str(media / "drums_90bpm.wav"), "--max-new-tokens", "12", "--seed", "3",
                        "--music", "never", "Describe this music")
    assert code == 0 and out.strip()


@pytest.mark.parametrize("make_bad, expect", [
    (lambda d: d / "missing.wav", "missing.wav: file not found"),
    (lambda d: (d / "bad.wav").write_bytes(os.urandom(500)) and d / "bad.wav", "bad.wav"),
    (lambda d: (d / "empty.wav").write_bytes(b"") or d / "empty.wav", "empty.wav"),
])
def test_bad_media_is_one_line_exit_2(tiny_dir, tmp_path, capsys, make_bad, expect):
    path = make_bad(tmp_path)
    code, out, err = _run(capsys, "chat", "--model", str(tiny_dir), "--audio", str(path),
                          "--music", "never", "Describe this music")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("m2ugen: error: ") and expect in err
    assert "Traceback" not in err


def test_bad_model_and_options_exit_2(tmp_path, capsys):
    code, _, err = _run(capsys, "chat", "--model", str(tmp_path / "nowhere"), "hi")
    assert code == 2 and "no such model directory or preset" in err
    code, _, err = _run(capsys, "chat", "--model", "tiny", "--top-p", "0", "hi")
    assert code == 2 and "--top-p" in err  # the option as the user wrote it
    (tmp_path / "m2ugen.json").write_text("{broken")
    code, _, err = _run(capsys, "chat", "--model", str(tmp_path), "hi")
    assert code == 2 and "invalid JSON" in err and str(tmp_path) in err


def test_console_script_reports_without_traceback(tiny_dir, media, tmp_path):
    """The installed `m2ugen` entry point, as a user runs it."""
    exe = Path(sys.executable).with_name("m2ugen")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([str(exe), "chat", "--model", str(tiny_dir), "--audio",
                         str(media / "piano_120bpm.wav"), "--max-new-tokens", "8", "--seed", "0",
                         "--music", "never", "Describe this music"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip()
    bad = subprocess.run([str(exe), "chat", "--model", str(tiny_dir), "--image",
                          str(media / "piano_120bpm.wav"), "hi"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "piano_120bpm.wav" in bad.stderr.strip().splitlines()[-1]


def test_interactive_conversation(tiny_dir, media, monkeypatch, capsys):
    lines = iter([f"/audio {media / 'piano_120bpm.wav'}", "What is this?", "/image /nope.png",
                  "And the tempo?", "/reset", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code, out, err = _run(capsys, "chat", "--model", str(tiny_dir), "--interactive",
                          "--max-new-tokens", "8", "--seed", "0", "--music", "never")
    assert code == 0
    assert "attached audio" in out and "conversation cleared" in out
    assert out.count("m2ugen> ") == 2
    assert "/nope.png" in err  # a bad attachment is reported and the session goes on


def test_unreachable_component_is_a_one_line_error(capsys, monkeypatch):
    """A hub preset offline: no traceback, the component and the fixes are named."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = _run(capsys, "chat", "--model", "musicgen-small", "hi")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "could not be loaded" in err and "m-a-p/MERT-v1-330M" in err
    assert "huggingface-cli login" in err


def test_wrong_kind_of_attachment_and_unwritable_paths(tmp_path, media, capsys):
    code, _, err = _run(capsys, "chat", "--model", "tiny", "--video",
                        str(media / "sunset.png"), "hi")
    assert code == 2 and "looks like an image file" in err and "--image" in err
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = _run(capsys, "synth-data", str(blocker / "data"))
    assert code == 2 and err.count("\n") == 1 and str(blocker) in err
    assert "Traceback" not in err


def test_attachments_are_decoded_with_the_models_spec_before_it_loads(tiny_dir, tiny_model,
                                                                      media, tmp_path,
                                                                      monkeypatch, capsys):
    """A bad file costs a second, not a model load: each attachment goes through the one
    media entry with the spec read from the model's config files, then the model loads —
    and what reaches the model is exactly what its own `media_spec` would have loaded."""
    import numpy as np

    from m2ugen import media as media_module
    from m2ugen.chat import ChatSession
    from m2ugen.model import M2UGen

    events: list[str] = []
    real_load, real_media = M2UGen.from_pretrained.__func__, media_module.load_media
    real_attachment = media_module.load_attachment
    monkeypatch.setattr(M2UGen, "from_pretrained", classmethod(
        lambda cls, *a, **k: events.append("model") or real_load(cls, *a, **k)))
    monkeypatch.setattr(media_module, "load_attachment", lambda m, path, spec: events.append(m)
                        or real_attachment(m, path, spec))
    seen: dict = {}
    real_stream = ChatSession.stream

    def stream(self, message, **kwargs):
        seen.update({k: kwargs[k] for k in ("audio", "image", "video") if k in kwargs})
        return real_stream(self, message, **kwargs)

    monkeypatch.setattr(ChatSession, "stream", stream)
    song, clip = media / "piano_120bpm.wav", media / "shapes.mp4"
    code, _, err = _run(capsys, "chat", "--model", str(tiny_dir), "--audio", str(song),
                        "--video", str(clip), "--music", "never", "--max-new-tokens", "2", "hi")
    assert code == 0, err
    assert events == ["audio", "video", "model"]
    spec = tiny_model.media_spec
    # audio arrives at the file's own rate; the encoder's resampling of it is the spec's load
    np.testing.assert_array_equal(real_media("audio", seen["audio"], spec),
                                  real_media("audio", song, spec))
    np.testing.assert_array_equal(seen["video"], real_media("video", clip, spec))

    # a file that does not decode: one line, and the model never loads
    events.clear()
    bad = tmp_path / "not-really.wav"
    bad.write_bytes(b"RIFF garbage")
    code, _, err = _run(capsys, "chat", "--model", str(tiny_dir), "--audio", str(bad), "hi")
    assert code == 2 and "cannot decode audio" in err and events == ["audio"]


def test_python_dash_m_cli_runs_the_commands(tmp_path):
    """`python -m m2ugen.cli` (the package's __main__; torchrun launches training so)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([sys.executable, "-m", "m2ugen.cli", "--help"], capture_output=True,
                        text=True, env=env, timeout=120)
    assert ok.returncode == 0 and "usage: m2ugen" in ok.stdout
    for command in ("make-tiny", "chat", "app", "train", "cache-features", "synth-data",
                    "convert-original", "info"):
        assert command in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "m2ugen.cli", "info", str(tmp_path / "no")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr == (
        f"m2ugen: error: {tmp_path / 'no'}: not a model directory (no such directory); "
        "`m2ugen info` takes a directory holding m2ugen.json, e.g. ckpts/tiny or a training "
        "run's out=\n")


@pytest.fixture
def served(monkeypatch):
    """`m2ugen app` with build_app and launch recorded instead of run."""
    import m2ugen.app

    calls: dict = {}
    monkeypatch.setattr(m2ugen.app, "build_app",
                        lambda model, **kw: calls.setdefault("build", (model, kw)) and "demo")
    monkeypatch.setattr(m2ugen.app, "launch",
                        lambda demo, **kw: calls.setdefault("launch", (demo, kw)))
    return calls


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_command_passes_every_option_and_writes_the_examples(served, tmp_path, capsys):
    from m2ugen.app import Limits
    from m2ugen.examples import NAMES

    examples, port = tmp_path / "examples", _free_port()
    code, out, err = _run(capsys, "app", "--model", "my-model", "--device", "cpu", "--port",
                          str(port), "--share", "--max-upload-mb", "5", "--concurrency", "3",
                          "--examples-dir", str(examples), "--trust-remote-code",
                          "--dtype", "bf16", "--judge", "my-clap")
    assert code == 0, err
    assert sorted(p.name for p in examples.iterdir()) == sorted(NAMES)  # written: it was missing
    assert f"wrote example media to {examples}" in out
    model, kw = served["build"]
    assert model == "my-model" and kw == {
        "device": "cpu", "dtype": "bf16", "trust_remote_code": True, "examples_dir": examples,
        "limits": Limits(max_upload_mb=5.0, concurrency=3), "judge": "my-clap",
        "cache": "dynamic", "compile": False, "quantize": None}
    assert served["launch"] == ("demo", {"host": "127.0.0.1", "port": port, "share": True,
                                         "max_upload_mb": 5.0, "examples_dir": examples})


def test_app_command_defaults_and_an_existing_examples_dir_is_left_alone(served, tmp_path,
                                                                        capsys):
    from m2ugen.app import Limits

    mine = tmp_path / "mine"
    mine.mkdir()
    code, out, _ = _run(capsys, "app", "--examples-dir", str(mine), "--port", str(_free_port()))
    assert code == 0 and list(mine.iterdir()) == [] and "wrote" not in out
    model, kw = served["build"]
    assert model == "tiny" and kw["limits"] == Limits() and kw["limits"].concurrency == 1
    assert not kw["trust_remote_code"] and served["launch"][1]["share"] is False
    assert kw["dtype"] == "auto" and kw["judge"] is None
    served.clear()
    assert _run(capsys, "app", "--port", str(_free_port()))[0] == 0
    assert served["build"][1]["examples_dir"] is None  # the package reaches for no folder


def test_gradio_app_is_m2ugen_app_with_the_repos_examples(gradio_app, monkeypatch):
    calls: list = []
    monkeypatch.setattr(gradio_app, "m2ugen_main", lambda argv: calls.append(argv) or 0)
    assert gradio_app.main(["--port", "7861", "--concurrency", "2"]) == 0
    repo = Path(gradio_app.__file__).resolve().parent
    assert calls == [["app", "--examples-dir", str(repo / "examples" / "media"), "--port",
                      "7861", "--concurrency", "2"]]


def test_importing_the_launcher_edits_neither_environment_nor_sys_path():
    code = ("import os, sys, importlib.util as u; env, path = dict(os.environ), list(sys.path); "
            "s = u.spec_from_file_location('g', 'gradio_app.py'); "
            "s.loader.exec_module(u.module_from_spec(s)); "
            "print(env == dict(os.environ), path == sys.path)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout.split()
    assert out == ["True", "True"]


def test_music_never_does_not_load_the_decoder(tiny_model, tmp_path, capsys):
    """`--music never` never touches the decoder: with its directory gone the chat still
    answers, while a reply that needs music names the missing decoder in one line."""
    model = tiny_model.save_pretrained(tmp_path / "model")
    cfg = json.loads((model / "m2ugen.json").read_text())
    cfg["decoder_path"] = str(tmp_path / "no-decoder-here")
    (model / "m2ugen.json").write_text(json.dumps(cfg))
    args = ("chat", "--model", str(model), "--max-new-tokens", "4", "--seed", "0", "hi",
            "--out", str(tmp_path / "m.wav"))
    code, out, err = _run(capsys, *args, "--music", "never")
    assert code == 0 and out.strip(), err
    code, _, err = _run(capsys, *args, "--music", "always")
    assert code == 2 and err.count("\n") == 1 and "no-decoder-here" in err


def _cpu_computes_bf16() -> bool:
    try:
        return bool(set(Path("/proc/cpuinfo").read_text().split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False


@pytest.mark.parametrize("flag", ["bf16", "fp32", None])
def test_dtype_flag_reaches_the_model_and_its_decoder(tiny_dir, tmp_path, monkeypatch, capsys,
                                                      flag):
    """--dtype is what the chatting model's weights are (LLM, adapters, decoder); without
    it, auto: bf16 on a CPU that computes it natively (this one's /proc/cpuinfo), else fp32."""
    import torch

    from m2ugen.chat import ChatSession
    from m2ugen.loading import decoder_parameters

    used = []
    real_init = ChatSession.__init__

    def init(self, model, *a, **k):
        used.append(model)
        real_init(self, model, *a, **k)

    monkeypatch.setattr(ChatSession, "__init__", init)
    out = tmp_path / "m.wav"
    argv = ["chat", "--model", str(tiny_dir), "--music", "always", "--seconds", "0.2",
            "--max-new-tokens", "3", "--seed", "0", "--out", str(out), "hi"]
    code, _, err = _run(capsys, *argv, *(["--dtype", flag] if flag else []))
    assert code == 0, err
    want = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(
        flag, torch.bfloat16 if _cpu_computes_bf16() else torch.float32)
    (model,) = used
    assert {p.dtype for p in model.parameters()} == {want}
    assert {p.dtype for _, p in decoder_parameters(model.decoder)} == {want}
    assert out.is_file()
    # generation only, on the CPU: LoRA stays beside the weights (merging would copy them)
    assert not any(m.merged for m in model.llm._mergeable())


def test_a_bad_dtype_is_one_line_before_anything_loads(capsys):
    for face in (["chat", "hi"], ["app"], ["eval", "musicqa", "--data", "x.json"]):
        with pytest.raises(SystemExit) as e:  # argparse's exit, our one-line message
            main([*face, "--dtype", "bf32"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert "--dtype: invalid choice: 'bf32'" in err and "'fp16', 'fp32'" in err
