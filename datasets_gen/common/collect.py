"""Finding input media: files under a folder, pairs matched by file stem, YouTube clips."""

from __future__ import annotations

import csv
import importlib.util
import socket
from collections.abc import Iterable
from pathlib import Path

from datasets_gen.common.records import DatasetGenError


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
            rows.append((row[0].strip(), start, end))
    return rows


def youtube_unavailable(host: str = "www.youtube.com", timeout: float = 5.0) -> str | None:
    """None when yt-dlp is installed and YouTube is reachable, else the reason."""
    if importlib.util.find_spec("yt_dlp") is None:
        return ("yt-dlp is not installed (pip install yt-dlp); or pass --audio-dir with "
                "local audio files")
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        return (f"cannot reach {host} ({e}); run where the network allows, or pass "
                "--audio-dir with local audio files")
    return None


def download_clip(video_id: str, start: float, end: float, folder: Path) -> Path:
    """One clip's audio as WAV via yt-dlp (needs ffmpeg on PATH); returns its path."""
    import yt_dlp

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{video_id}.wav"
    opts = {
        "format": "bestaudio/best", "quiet": True, "noprogress": True,
        "outtmpl": str(folder / f"{video_id}.%(ext)s"),
        "download_ranges": yt_dlp.utils.download_range_func(None, [(start, end)]),
        "force_keyframes_at_cuts": True,
        "postprocessors": [{"key": "FFmpegExtractAudio", "preferredcodec": "wav"}],
    }
    with yt_dlp.YoutubeDL(opts) as ydl:
        ydl.download([f"https://www.youtube.com/watch?v={video_id}"])
    if not target.is_file():
        raise FileNotFoundError(f"yt-dlp finished but {target} is missing")
    return target
