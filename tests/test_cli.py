"""`m2ugen make-tiny` and `m2ugen chat` end to end; user errors exit 2 with one line."""

from __future__ import annotations

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
