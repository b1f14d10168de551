"""Finding input media: files under a folder, pairs matched by file stem, YouTube clips."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from datasets_gen.common.records import DatasetGenError

VIDEO_ID = re.compile(r"[A-Za-z0-9_-]+")


def list_media(root: Path, extensions: Iterable[str]) -> dict[str, Path]:
    """{path relative to root (posix): absolute path} for files with these extensions."""
    if not root.is_dir():
        raise DatasetGenError(f"{root}: not a directory; pass the folder holding the media")
    exts = {e.lower() for e in extensions}
    found = {p.relative_to(root).as_posix(): p.resolve() for p in sorted(root.rglob("*"))
             if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")}
    if not found:
        raise DatasetGenError(f"{root}: no files with extensions {', '.join(sorted(exts))}")
    return found


def by_stem(files: dict[str, Path], what: str) -> dict[str, str]:
    """{stem: relative path}; two files with one stem are ambiguous, so an error."""
    out: dict[str, str] = {}
    for rel in files:
        stem = Path(rel).with_suffix("").as_posix()
        if stem in out:
            raise DatasetGenError(f"{what}: {out[stem]} and {rel} share the name {stem!r}; "
                                  "keep one per name")
        out[stem] = rel
    return out


def read_youtube_ids(path: Path) -> list[tuple[str, float, float]]:
    """(id, start s, end s) from a text list (one id per line) or an AudioSet-style CSV
    (`YTID, start_seconds, end_seconds, …`; lines starting with # ignored)."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f, skipinitialspace=True), 1):
            if not row or row[0].startswith("#") or not row[0].strip():
                continue
            try:
                start = float(row[1]) if len(row) > 1 else 0.0
                end = float(row[2]) if len(row) > 2 else start + 10.0
            except ValueError as e:
                raise DatasetGenError(f"{path}:{n}: start/end must be seconds ({e})") from e
            video = row[0].strip()
            if not VIDEO_ID.fullmatch(video):  # it becomes a file name and a URL
                raise DatasetGenError(f"{path}:{n}: {video!r} is not a YouTube video id "
                                      "(letters, digits, - and _)")
            rows.append((video, start, end))
    return rows


def youtube_unavailable() -> str | None:
    """None when the `yt-dlp` and `ffmpeg` commands are on PATH, else what is missing.
    (Whether YouTube is reachable shows per clip: yt-dlp's own error is the reason.)"""
    for command, fix in (("yt-dlp", "pip install yt-dlp"),
                         ("ffmpeg", "install FFmpeg, e.g. apt-get install ffmpeg")):
        if shutil.which(command) is None:
            return (f"the {command} command is not on PATH ({fix}); or pass --audio-dir "
                    "with local audio files")
    return None


class DownloadError(RuntimeError):
    """yt-dlp could not fetch one clip (unavailable, private, removed, no network …)."""


def download_clip(video_id: str, start: float, end: float, folder: Path,
                  timeout: float = 600.0) -> Path:
    """Seconds `start`..`end` of one video's audio as `folder/<id>.wav`, by the yt-dlp
    command (its options are its stable interface; ffmpeg cuts and converts)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{video_id}.wav"
    command = [shutil.which("yt-dlp") or "yt-dlp", "--quiet", "--no-warnings",
               "--no-progress", "--no-playlist", "--format", "bestaudio/best",
               "--extract-audio", "--audio-format", "wav",
               "--download-sections", f"*{start:g}-{end:g}", "--force-keyframes-at-cuts",
               "--output", str(folder / f"{video_id}.%(ext)s"),
               "--", f"https://www.youtube.com/watch?v={video_id}"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as e:
        raise DownloadError(f"{video_id}: yt-dlp took over {timeout:g} s") from e
    if proc.returncode != 0:
        lines = [x.strip() for x in proc.stderr.splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith("ERROR")] or lines
        raise DownloadError(f"{video_id}: yt-dlp failed (exit {proc.returncode}): "
                            f"{errors[-1] if errors else 'no message'}")
    if not target.is_file():
        raise DownloadError(f"{video_id}: yt-dlp finished but wrote no {target.name}")
    return target
