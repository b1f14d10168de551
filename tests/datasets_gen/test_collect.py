"""datasets_gen.common.collect: the YouTube download step, against a local fake of the
`yt-dlp` command on PATH (never the network)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # datasets_gen lives beside the m2ugen package, not inside it
    sys.path.insert(0, str(ROOT))

from datasets_gen.common import synthetic  # noqa: E402

# Behaves like yt-dlp for the options download_clip passes: writes the --output template
# with ext wav (a copy of $FAKE_WAV), or fails as yt-dlp does for a removed video. Every
# call's arguments are appended to $FAKE_LOG.
FAKE_YTDLP = """#!{python}
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
video = args[-1].split("v=")[1]
if video.startswith("gone"):
    print("WARNING: [youtube] some noise", file=sys.stderr)
    print(f"ERROR: [youtube] {{video}}: Video unavailable. This video has been removed",
          file=sys.stderr)
    sys.exit(1)
if not video.startswith("silent"):  # silent*: exits 0 but writes nothing
    template = args[args.index("--output") + 1]
    shutil.copy(os.environ["FAKE_WAV"], template.replace("%(ext)s", "wav"))
"""


def collect():
    return importlib.import_module("datasets_gen.MUCaps.01_collect")


@pytest.fixture
def fake_bin(tmp_path, monkeypatch) -> Path:
    """A PATH holding only the fakes: yt-dlp and ffmpeg (which yt-dlp would call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("yt-dlp", FAKE_YTDLP.format(python=sys.executable)),
                       ("ffmpeg", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    wav = synthetic.write_audio(tmp_path / "src", 1, seconds=1.0)[0]
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_WAV", str(wav))
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    return bin_dir


def ids_file(tmp_path: Path) -> Path:
    path = tmp_path / "segments.csv"
    path.write_text("# YTID, start_seconds, end_seconds, positive_labels\n"
                    'okAAAAAAAAA, 30.000, 40.000, "/m/04rlf"\n'
                    'goneBBBBBBB, 0.000, 10.000, "/m/04rlf"\n'
                    'okCCCCCCCCC, 12.500, 22.500, "/m/04rlf"\n')
    return path


def calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "calls.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []


def test_download_records_clips_and_unavailable_ones(fake_bin, tmp_path, capsys):
    out = tmp_path / "work"
    assert collect().run(["--out", str(out), "--youtube-ids", str(ids_file(tmp_path))]) == 0
    records = json.loads((out / "01_collect.json").read_text())
    ok = records["okAAAAAAAAA.wav"]
    assert Path(ok["path"]) == (out / "audio" / "okAAAAAAAAA.wav").resolve()
    assert ok["clip_id"] == "okAAAAAAAAA" and ok["seconds"] == 1.0
    assert records["okCCCCCCCCC.wav"]["file"] == "okCCCCCCCCC.wav"
    # the unavailable clip fails alone, with yt-dlp's own ERROR line as the reason
    assert records["goneBBBBBBB.wav"]["error"] == (
        "DownloadError: goneBBBBBBB: yt-dlp failed (exit 1): ERROR: [youtube] goneBBBBBBB: "
        "Video unavailable. This video has been removed")
    assert "2 done, 0 skipped, 1 failed (DownloadError: goneBBBBBBB" in capsys.readouterr().out
    by_id = {c[-1].split("v=")[1]: c for c in calls(tmp_path)}
    assert sorted(by_id) == ["goneBBBBBBB", "okAAAAAAAAA", "okCCCCCCCCC"]
    a = by_id["okAAAAAAAAA"]
    assert a[a.index("--download-sections") + 1] == "*30-40"
    assert by_id["okCCCCCCCCC"][a.index("--download-sections") + 1] == "*12.5-22.5"
    assert a[a.index("--audio-format") + 1] == "wav" and a[-2] == "--"
    # a rerun retries only the failure
    assert collect().run(["--out", str(out), "--youtube-ids", str(ids_file(tmp_path))]) == 1
    assert [c[-1].split("v=")[1] for c in calls(tmp_path)[3:]] == ["goneBBBBBBB"]


def test_a_download_that_writes_nothing_fails_that_clip(fake_bin, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("silentDDDDD\n")
    assert collect().run(["--out", str(tmp_path / "w"), "--youtube-ids", str(ids)]) == 1
    record = json.loads((tmp_path / "w" / "01_collect.json").read_text())["silentDDDDD.wav"]
    assert record["error"] == ("DownloadError: silentDDDDD: yt-dlp finished but wrote no "
                               "silentDDDDD.wav")


@pytest.mark.parametrize("missing", ["yt-dlp", "ffmpeg"])
def test_missing_command_is_one_line_and_exit_2(fake_bin, tmp_path, capsys, missing):
    (fake_bin / missing).unlink()
    assert collect().run(["--out", str(tmp_path / "w"),
                          "--youtube-ids", str(ids_file(tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: cannot download from YouTube: the {missing} command is "
                             "not on PATH")
    assert calls(tmp_path) == []


def test_an_id_that_is_not_a_youtube_id_is_a_one_line_error(fake_bin, tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("okAAAAAAAAA\n../../etc/x\n")
    assert collect().run(["--out", str(tmp_path / "w"), "--youtube-ids", str(ids)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {ids}:2: '../../etc/x' is not a YouTube video id (letters, digits, " \
                  "- and _)"
    assert calls(tmp_path) == []
