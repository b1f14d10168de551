"""The user's environment as a mistake: a busy port, a full disk, an impossible --out, a
directory where a file is expected, a device this machine does not have, a prompt that is
not UTF-8. Each is one line naming the user's own path or option (never one of our
temporary names), exit 2, no traceback.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m2ugen.cli import main
from m2ugen.errors import ConfigError, M2UGenError

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def one_line_error(capsys, argv: list[str]) -> str:
    """Run `m2ugen ARGV` → the one error line (our log lines may precede it)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and all(line.startswith("m2ugen: ") for line in
                                          err.splitlines()), err
    [line] = [line for line in err.splitlines() if line.startswith("m2ugen: error: ")]
    return line


def run_cli(*argv: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
            fsize: int | None = None) -> subprocess.CompletedProcess:
    """`python -m m2ugen.cli ARGV` in a child process (optionally with a file size limit:
    the kernel then fails writes past `fsize` bytes, as a full disk fails them)."""
    prefix = []
    if fsize is not None:  # the limit is set in the child before m2ugen runs
        code = ("import resource, signal, runpy, sys; "
                "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize})); "
                "sys.argv = ['m2ugen', *sys.argv[1:]]; "
                "runpy.run_module('m2ugen.cli', run_name='__main__')")
        prefix = ["-c", code]
    else:
        prefix = ["-m", "m2ugen.cli"]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1",
                **(env or {})}
    return subprocess.run([sys.executable, *prefix, *argv], input=stdin, capture_output=True,
                          env=full_env, timeout=300, cwd=REPO)


def error_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert "Traceback" not in err and all(line.startswith("m2ugen: ")
                                          for line in err.splitlines()), err
    [line] = [line for line in err.splitlines() if line.startswith("m2ugen: error: ")]
    return line


# ---- a busy port -------------------------------------------------------------------------
@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_busy_port_in_the_launcher(gradio_app, busy_port, capsys):
    """Refused before the model loads (the model named does not even exist)."""
    code = gradio_app.main(["--model", "no-such-model", "--port", str(busy_port)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err == f"m2ugen: error: port {busy_port} is in use; pass --port N (another " \
                  "program, or an earlier m2ugen app, is listening on it)\n"


def test_busy_port_in_launch(tiny_model, busy_port):
    from m2ugen.app import build_app, launch

    demo = build_app(tiny_model, examples_dir=None)
    with pytest.raises(ConfigError, match=f"port {busy_port} is in use; pass --port N"):
        launch(demo, port=busy_port, prevent_thread_lock=True, quiet=True, examples_dir=None)


@pytest.mark.parametrize("host", ["no-such-host.invalid", "999.1.1.1", "10.255.255.254"])
def test_impossible_host(gradio_app, capsys, host):
    code = gradio_app.main(["--model", "no-such-model", "--host", host])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"--host {host}" in err, err


# ---- a full disk ---------------------------------------------------------------------------
def test_full_disk_while_writing_music(tiny_dir, tmp_path):
    out = tmp_path / "song.wav"
    proc = run_cli("chat", "--model", str(tiny_dir), "--music", "always", "--seconds", "1",
                   "--max-new-tokens", "2", "--out", str(out), "hi", fsize=16_000)
    line = error_line(proc)
    assert line.startswith(f"m2ugen: error: {out}: cannot write the audio file (File too large)")
    assert ".tmp" not in line and not out.exists() and os.listdir(tmp_path) == []


def test_full_disk_while_writing_a_dataset(tmp_path):
    proc = run_cli("synth-data", str(tmp_path / "data"), fsize=16_000)
    line = error_line(proc)
    assert f"{tmp_path / 'data'}/" in line and "File too large" in line and ".tmp" not in line
    leftovers = [p.name for p in (tmp_path / "data").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_full_disk_while_writing_a_model(tmp_path):
    proc = run_cli("make-tiny", str(tmp_path / "tiny"), fsize=100_000)
    line = error_line(proc)
    assert line.startswith(f"m2ugen: error: {tmp_path / 'tiny'}") and "File too large" in line
    assert ".tmp" not in line and "m2ugen-build" not in line


def test_no_space_left_names_the_users_path_not_the_temporary(tmp_path, monkeypatch, capsys):
    """ENOSPC as the OS reports it from inside an atomic write: the temporary's name is
    mapped back to the file the user asked for."""
    import m2ugen.data.synth as synth

    target = tmp_path / "data"

    def disk_full(out, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                      str(target / "audio" / ".clip_000.wav.k2j4h5g1.wav.tmp"))

    monkeypatch.setattr(synth, "synthesize", disk_full)
    line = one_line_error(capsys, ["synth-data", str(target)])
    assert line == (f"m2ugen: error: {target / 'audio' / 'clip_000.wav'}: No space left on "
                    "device; free some disk space or choose another path (run with -v for "
                    "the traceback)")


# ---- an impossible --out -------------------------------------------------------------------
def test_out_is_a_directory(tmp_path, capsys):
    (tmp_path / "music.wav").mkdir()
    line = one_line_error(capsys, ["chat", "--out", str(tmp_path / "music.wav"), "hi"])
    assert "is a directory" in line and str(tmp_path / "music.wav") in line


def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    line = one_line_error(capsys, ["chat", "--out", str(tmp_path / "notes.txt/a/b.wav"), "hi"])
    assert f"{tmp_path / 'notes.txt'} is a file, not a directory" in line
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_out_name_too_long(tmp_path, capsys):
    line = one_line_error(capsys, ["chat", "--out", str(tmp_path / ("a" * 250 + ".wav")),
                                   "hi"])
    assert "the file name is too long" in line


@pytest.mark.skipif(IS_ROOT, reason="root writes anywhere")
def test_out_in_a_read_only_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    line = one_line_error(capsys, ["chat", "--out", str(locked / "x.wav"), "hi"])
    assert f"{locked} is not writable" in line


# ---- a directory where a file is expected --------------------------------------------------
@pytest.mark.parametrize("flag", ["--audio", "--image", "--video"])
def test_attachment_is_a_directory(tmp_path, capsys, flag):
    line = one_line_error(capsys, ["chat", flag, str(tmp_path), "hi"])
    assert f"{tmp_path}: is a directory (given to {flag})" in line and "not found" not in line


@pytest.mark.parametrize("command", ["train", "cache-features"])
def test_config_is_a_directory(tmp_path, capsys, command):
    line = one_line_error(capsys, [command, "--config", str(tmp_path)])
    assert f"{tmp_path}: is a directory" in line and "not found" not in line


def test_dataset_spec_is_a_directory(tmp_path):
    from m2ugen.data.spec import load_spec

    with pytest.raises(ConfigError, match=f"{tmp_path}: is a directory"):
        load_spec(tmp_path)


def test_dataset_file_is_a_directory_and_root_is_a_file(tmp_path):
    from m2ugen.data.spec import load_spec

    (tmp_path / "caps.json").mkdir()
    spec = tmp_path / "dataset.yaml"
    spec.write_text("stage1:\n  - {format: mucaps, file: caps.json, root: audio}\n")
    with pytest.raises(ConfigError, match=r"'file' .*caps\.json is a directory"):
        load_spec(spec)
    (tmp_path / "caps.json").rmdir()
    (tmp_path / "caps.json").write_text("[]")
    (tmp_path / "audio").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"'root' .*audio is a file"):
        load_spec(spec)


def test_app_attachment_that_is_a_directory(tiny_model, tmp_path):
    from m2ugen.app import AssistantApp

    folder = tmp_path / "song.wav"
    folder.mkdir()
    app = AssistantApp(tiny_model, media_root=tmp_path / "media")
    *_, (shown, _, _) = app.respond({"text": "hi", "files": [{"path": str(folder)}]}, None,
                                    temperature=0.6, top_p=0.8, max_new_tokens=8,
                                    music="never", seconds=1, guidance=3.5, steps=0,
                                    condition="embedding", seed=0)
    assert shown[-1]["content"].startswith(f"⚠️ {folder}: is a directory")


# ---- a device this machine does not have ---------------------------------------------------
BAD_DEVICES = ["tpu", "meta", "cuda:x", "gpu0"]
if not torch.cuda.is_available():
    BAD_DEVICES += ["cuda", "cuda:0"]
BAD_DEVICES.append(f"cuda:{torch.cuda.device_count() + 7}")


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_chat_device(capsys, device):
    line = one_line_error(capsys, ["chat", "--device", device, "hi"])
    assert line.startswith("m2ugen: error: --device ") and device in line


@pytest.mark.parametrize("device", ["tpu", "cuda:99"])
def test_app_launcher_device(gradio_app, capsys, device):
    code = gradio_app.main(["--model", "no-such-model", "--device", device])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("m2ugen: error: --device ") and err.count("\n") == 1


@pytest.mark.parametrize("device", ["tpu", "xla", f"cuda:{torch.cuda.device_count() + 7}"])
def test_python_api_device(tiny_dir, device):
    from m2ugen.model import M2UGen

    with pytest.raises(ConfigError, match=f"device {device}|device '{device}'"):
        M2UGen.from_pretrained(tiny_dir, device=device)


# ---- text that is not UTF-8 ----------------------------------------------------------------
def test_prompt_bytes_not_utf8(tmp_path):
    """A Latin-1 terminal: the bytes reach sys.argv as lone surrogates."""
    proc = subprocess.run([sys.executable, "-m", "m2ugen.cli", "chat", "--model", "tiny",
                           "--max-new-tokens", "2", b"caf\xe9 music".decode("utf-8",
                                                                            "surrogateescape")],
                          capture_output=True, timeout=300, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "LC_ALL": "C.UTF-8"})
    line = error_line(proc)
    assert line.startswith("m2ugen: error: the prompt is not valid UTF-8 text (byte 0xe9 at "
                           "character 3)")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8:surrogateescape"])
def test_interactive_line_not_utf8(tiny_dir, encoding):
    """Whatever the stdin's error handler, a line that is not UTF-8 is one error line, and
    the conversation goes on with the lines after it."""
    proc = run_cli("chat", "--model", str(tiny_dir), "--music", "never", "--max-new-tokens",
                   "2", "-i", stdin=b"caf\xe9\nhello\n/quit\n",
                   env={"PYTHONIOENCODING": encoding})
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "not valid UTF-8" in errors[0] and "0xe9" in errors[0]
    out = proc.stdout.decode("utf-8", "replace")
    assert out.count("you> ") == 3  # café, hello, /quit: nothing lost after the bad line
    assert out.split("you> ")[2].startswith("m2ugen> ")  # "hello" was answered


def test_app_message_not_utf8(tiny_model, tmp_path):
    """JSON can carry a lone surrogate ("\\udce9"); the app answers in the chat."""
    from m2ugen.app import AssistantApp

    app = AssistantApp(tiny_model, media_root=tmp_path)
    *_, (shown, _, state) = app.respond({"text": "caf\udce9", "files": []}, None,
                                        temperature=0.6, top_p=0.8, max_new_tokens=8,
                                        music="never", seconds=1, guidance=3.5, steps=0,
                                        condition="embedding", seed=0)
    assert "not valid UTF-8" in shown[-1]["content"] and state.session.history == []


def test_python_api_message_not_utf8(tiny_model):
    from m2ugen.chat import ChatSession

    with pytest.raises(M2UGenError, match="not valid UTF-8"):
        ChatSession(tiny_model).send("caf\udce9")


@pytest.mark.parametrize("temporary, users", [
    ("/x/d/audio/.clip_000.wav.k2j4h5g1.wav.tmp", "/x/d/audio/clip_000.wav"),
    ("/x/.dataset.yaml.abcd_234.tmp", "/x/dataset.yaml"),
    ("/x/run/.adapter.safetensors.q1w2e3r4.safetensors.tmp", "/x/run/adapter.safetensors"),
    ("/x/.out.m2ugen-build-123-ab12cd/llm/model.safetensors", "/x/out"),
    ("/x/out/.m2ugen-build-55-zz/tokenizer/tokenizer.json", "/x/out"),
    ("/x/notes.txt", "/x/notes.txt"),
])
def test_temporary_names_map_to_the_users_path(temporary, users):
    """Every temporary naming scheme of our atomic writes, mapped back by the CLI."""
    from m2ugen.cli import _user_path

    assert _user_path(temporary) == users
