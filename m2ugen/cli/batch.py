"""`m2ugen chat --batch requests.jsonl --out-dir DIR`: many independent requests, the LLM
answering `--batch-size` of them at once (`chat.send_batch`).

A line is one JSON object: {"prompt": "…", "audio"|"image"|"video": "path" (optional,
relative to the file's folder), "seed": n (optional), "music": "auto|always|never"
(optional; default --music)}. Blank lines are skipped. Every line is checked and its media
decoded before the model loads; a mistake is one line naming FILE:LINE. DIR/replies.jsonl
gets one line per request, in order, written atomically once all are done; music goes to
DIR/reply-NNNN.wav.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2ugen.cli.common import candidate_paths, check_attachment
from m2ugen.errors import M2UGenError, check_seed

log = logging.getLogger("m2ugen")

KEYS = ("prompt", "audio", "image", "video", "seed", "music")


@dataclass
class BatchLine:
    """One request as read from the file: where it is, what it asks, its media paths."""

    line: int
    prompt: str
    media: dict[str, Any] = field(default_factory=dict)  # modality → loaded value
    paths: dict[str, str] = field(default_factory=dict)  # modality → the path as written
    seed: int | None = None
    music: str | None = None


def _parse(where: str, text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise M2UGenError(f"{where}: not JSON ({e.msg}, column {e.colno}); each line is one "
                          'object like {"prompt": "Describe this music", "audio": "a.wav"}') \
            from None
    if not isinstance(obj, dict):
        raise M2UGenError(f"{where}: a line must be a JSON object with a \"prompt\", "
                          f"not {type(obj).__name__}")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise M2UGenError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; a line "
                          f"takes {', '.join(KEYS)}")
    return obj


def _line(n: int, obj: dict[str, Any], base: Path, spec) -> BatchLine:
    from m2ugen.chat import check_utf8
    from m2ugen.config import MODALITIES
    from m2ugen.media import load_media
    from m2ugen.music import MUSIC_MODES

    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():  # read_requests adds FILE:LINE
        got = "" if prompt is None or isinstance(prompt, str) else f" (got {prompt!r})"
        raise M2UGenError(f"\"prompt\" is missing or empty{got}; give the message as a "
                          "string")
    check_utf8(prompt, "the prompt")
    out = BatchLine(line=n, prompt=prompt)
    if obj.get("seed") is not None:
        out.seed = check_seed(obj["seed"], '"seed"')
    if obj.get("music") is not None:
        if obj["music"] not in MUSIC_MODES:
            raise M2UGenError(f"\"music\": {obj['music']!r}: use one of "
                              f"{', '.join(MUSIC_MODES)}")
        out.music = obj["music"]
    for modality in MODALITIES:
        value = obj.get(modality)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise M2UGenError(f"\"{modality}\" must be a file path (a string)")
        path = base / value
        check_attachment(str(path), modality)
        out.media[modality] = load_media(modality, path, spec)
        out.paths[modality] = value
    return out


def read_requests(path: Path, spec) -> list[BatchLine]:
    """Every non-blank line of `path`, checked, with its media decoded for `spec`."""
    if path.is_dir():
        raise M2UGenError(f"--batch {path}: is a directory; name the JSONL file")
    if not path.is_file():
        raise M2UGenError(f"--batch {path}: file not found")
    lines = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            try:  # a first line may open with the BOM some editors write (utf-8-sig)
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise M2UGenError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save "
                                  "the file as UTF-8") from None
            if not text.strip():
                continue
            obj = _parse(where, text)
            try:
                lines.append(_line(n, obj, path.parent, spec))
            except M2UGenError as e:
                raise M2UGenError(f"{where}: {e}") from None
    if not lines:
        raise M2UGenError(f"--batch {path}: no requests in it (one JSON object per line)")
    return lines


def _check_out_dir(out_dir: Path | None) -> Path:
    if out_dir is None:
        raise M2UGenError("--batch needs --out-dir DIR for replies.jsonl and the music")
    if out_dir.exists() and not out_dir.is_dir():
        raise M2UGenError(f"--out-dir {out_dir}: is a file; name a directory")
    parent = out_dir
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise M2UGenError(f"--out-dir {out_dir}: {parent} is not a writable directory; "
                          "choose another path")
    return out_dir


def check_batch_args(args: argparse.Namespace) -> None:
    """--batch excludes a PROMPT, --interactive, the single-reply attachments and --out."""
    clash = [name for name, on in (("PROMPT", args.prompt), ("--interactive", args.interactive),
                                   ("--audio", args.audio), ("--image", args.image),
                                   ("--video", args.video), ("--out", args.out)) if on]
    if clash:
        raise M2UGenError(f"--batch takes its prompts and media from the file and writes "
                          f"into --out-dir; drop {', '.join(clash)} (or put them on a line "
                          "of the file)")
    if isinstance(args.batch_size, bool) or args.batch_size < 1:
        raise M2UGenError(f"--batch-size {args.batch_size}: use a whole number of at least 1")
    _check_out_dir(args.out_dir)


def run_batch(model, lines: list[BatchLine], settings, music, out_dir: Path,
              batch_size: int, judge=None) -> Path:
    """Answer every line, write the music and DIR/replies.jsonl; returns its path (`judge`:
    the --rerank judge; a reranked record lists the files best first with their scores)."""
    from tqdm import tqdm

    from m2ugen.chat import ChatRequest, send_batch
    from m2ugen.checkpoint import atomic_write_text
    from m2ugen.media import save_audio

    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    made = 0
    with tqdm(total=len(lines), desc="replies", unit="request", file=sys.stderr) as bar:
        for start in range(0, len(lines), batch_size):
            chunk = lines[start:start + batch_size]
            requests = [ChatRequest(b.prompt, seed=b.seed, music=b.music, **b.media)
                        for b in chunk]
            results = send_batch(model, requests, settings, music, batch_size=len(chunk),
                                 judge=judge)
            for i, (b, result) in enumerate(zip(chunk, results, strict=True), start + 1):
                record: dict[str, Any] = {"line": b.line, "prompt": b.prompt, **b.paths,
                                          "text": result.text, "seed": result.seed}
                if result.music is not None:
                    waves = result.music.waveforms
                    paths = candidate_paths(out_dir / f"reply-{i:04d}.wav", len(waves))
                    for p, wave in zip(paths, waves, strict=True):
                        save_audio(p, wave, result.music.sample_rate)
                    record["wav"] = str(paths[0])
                    if len(paths) > 1:
                        record["wavs"] = [str(p) for p in paths]
                    if result.music.scores is not None:
                        record["scores"] = [float(x) for x in result.music.scores]
                        record["ranking"] = list(result.music.ranking)
                    made += 1
                records.append(record)
            bar.update(len(chunk))
    replies = out_dir / "replies.jsonl"
    atomic_write_text(replies, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                       for r in records))
    print(f"wrote {replies} ({len(records)} replies, {made} with music)", file=sys.stderr)
    return replies
