"""Native decoders (mpg123 inside libsndfile, FFmpeg inside decord and PyAV, decord's own
log) print straight to file descriptor 2. Beside our one-line error that is noise the
user cannot act on: a bad media file must leave exactly one line on stderr — and a file
that decodes despite damage must leave none of theirs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from m2ugen.errors import MediaError
from m2ugen.media import load_audio, load_video

REPO = Path(__file__).resolve().parents[2]


def _mp3(path: Path) -> Path:
    """Two seconds of a sine as MP3, encoded with PyAV's FFmpeg."""
    codec = next((c for c in ("libmp3lame", "mp3") if c in av.codecs_available), None)
    if codec is None:
        pytest.skip("this FFmpeg build has no MP3 encoder")
    rate = 44_100
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        for start in range(0, len(wave), 1152):
            frame = av.AudioFrame.from_ndarray(wave[None, start:start + 1152], format="fltp",
                                               layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def bad(tmp_path_factory, media) -> dict[str, Path]:
    """Bad media, made here: undecodable and damaged-but-decodable."""
    d = tmp_path_factory.mktemp("bad-media")
    rng = np.random.default_rng(0)
    video = (media / "shapes.mp4").read_bytes()
    files = {"random.mp3": rng.bytes(4000), "random.mp4": rng.bytes(5000),
             "truncated.mp4": video[:len(video) // 2]}  # the index (moov) is at the end
    for name, data in files.items():
        (d / name).write_bytes(data)
    damaged = bytearray(_mp3(d / "ok.mp3").read_bytes())
    for i in range(400, len(damaged), 97):  # flip bytes in the frames, keep the first header
        damaged[i] = (damaged[i] * 7 + 3) % 256
    (d / "damaged.mp3").write_bytes(bytes(damaged))
    return {name: d / name for name in (*files, "damaged.mp3")}


def chat(tiny_dir: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "m2ugen.cli", "chat", "--model", str(tiny_dir), "--music",
         "never", "--max-new-tokens", "2", *argv, "Describe this."],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"})


@pytest.mark.parametrize("flag, name", [
    ("--audio", "random.mp3"),      # mpg123: "Note: Illegal Audio-MPEG-Header ..."
    ("--video", "truncated.mp4"),   # FFmpeg "moov atom not found" + decord's ERROR line
    ("--video", "random.mp4"),
    ("--audio", "truncated.mp4"),   # audio from a video container: the PyAV path
])
def test_bad_media_leaves_exactly_one_line(tiny_dir, bad, flag, name):
    proc = chat(tiny_dir, flag, str(bad[name]))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"m2ugen: error: {bad[name]}: cannot decode")


def test_damaged_but_decodable_mp3_leaves_no_native_lines(tiny_dir, bad):
    proc = chat(tiny_dir, "--audio", str(bad["damaged.mp3"]))
    assert proc.returncode == 0, proc.stderr
    assert all(line.startswith("m2ugen: ") for line in proc.stderr.splitlines()), proc.stderr


def test_verbose_still_shows_what_the_decoders_said(tiny_dir, bad):
    """Captured, not thrown away: `-v` logs it (one log line)."""
    proc = subprocess.run(
        [sys.executable, "-m", "m2ugen.cli", "-v", "chat", "--model", str(tiny_dir),
         "--audio", str(bad["random.mp3"]), "hi"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    [native] = [line for line in proc.stderr.splitlines() if "native decoder output" in line]
    assert "Illegal Audio-MPEG-Header" in native


@pytest.mark.parametrize("name, load", [
    ("random.mp3", lambda p: load_audio(p, sr=16_000)),
    ("truncated.mp4", lambda p: load_video(p, num_frames=4)),
    ("random.mp4", lambda p: load_video(p, num_frames=4)),
])
def test_loaders_keep_fd2_clean(bad, capfd, name, load):
    """The library face (the app, data checks): nothing reaches fd 2 either."""
    with pytest.raises(MediaError):
        load(bad[name])
    assert capfd.readouterr().err == ""


def test_concurrent_decodes_restore_stderr(bad, capfd):
    """fd 2 is process-wide: threads decoding at once (the app) must leave it restored."""
    problems: list[BaseException] = []

    def work() -> None:
        for name in ("random.mp3", "truncated.mp4", "damaged.mp3"):
            try:
                if name.endswith(".mp3"):
                    load_audio(bad[name], sr=16_000)
                else:
                    load_video(bad[name], num_frames=2)
            except MediaError:
                pass
            except BaseException as e:  # noqa: BLE001 (reported below)
                problems.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    os.write(2, b"still the terminal\n")
    assert capfd.readouterr().err == "still the terminal\n"
