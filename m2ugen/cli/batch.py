"""`m2ugen chat --batch requests.jsonl --out-dir DIR`: many independent requests, the LLM
answering `--batch-size` of them at once (`chat.send_batch`).

A line is one JSON object: {"prompt": "…", "audio"|"image"|"video": "path" (optional,
relative to the file's folder), "seed": n (optional), "music": "auto|always|never"
(optional; default --music)}. Blank lines are skipped. Every line is checked and its media
decoded before the model loads; a mistake is one line naming FILE:LINE. DIR/replies.jsonl
gets one line per request, in order, rewritten atomically after every batch; music goes to
DIR/reply-NNNN.wav. DIR/batch.json names the batch (the requests file's hash, the model and
every setting that shapes a reply, not --batch-size): a run stopped part-way continues
where it stopped when the same command is run again, and a DIR that holds another batch's
replies is refused before the model loads.
"""

from __future__ import annotations

import argparse
import hashlib
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
STATE = "batch.json"  # what DIR/replies.jsonl answers: batch_identity
REPLIES = "replies.jsonl"


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


def batch_identity(requests_file: Path, **what: Any) -> dict[str, Any]:
    """What a DIR's replies answer: the requests file's bytes (hashed) and `what` (model,
    settings), as JSON reads it back (so a saved identity compares equal)."""
    digest = hashlib.sha256(requests_file.read_bytes()).hexdigest()
    return json.loads(json.dumps({"format": 1, "requests": digest, **what}, default=str))


def replies_done(out_dir: Path, identity: dict[str, Any],
                 lines: list[BatchLine]) -> list[dict[str, Any]]:
    """The records an earlier run of this same batch left in DIR/replies.jsonl (none when
    DIR has no replies); ConfigError when DIR holds another batch's replies."""
    replies = out_dir / REPLIES
    if not replies.exists():
        return []
    try:
        saved = json.loads((out_dir / STATE).read_text(encoding="utf-8"))
        records = [json.loads(x) for x in replies.read_text(encoding="utf-8").splitlines()
                   if x.strip()]
    except (OSError, ValueError):
        saved, records = None, []
    done = [r.get("line") if isinstance(r, dict) else None for r in records]
    if saved != identity or done != [b.line for b in lines[:len(records)]]:
        raise M2UGenError(f"--out-dir {out_dir}: holds {REPLIES} of another batch (other "
                          "requests, model or settings); choose another --out-dir, or delete "
                          f"{replies} to start again")
    return records


def run_batch(model, lines: list[BatchLine], settings, music, out_dir: Path,
              batch_size: int, judge=None, identity: dict[str, Any] | None = None) -> Path:
    """Answer every line, write the music and DIR/replies.jsonl; returns its path (`judge`:
    the --rerank judge; a reranked record lists the files best first with their scores).
    With `identity` (batch_identity), the replies of an earlier run of the same batch in
    DIR are kept and only the rest are answered; without, DIR's replies are replaced."""
    from tqdm import tqdm

    from m2ugen.chat import ChatRequest, send_batch
    from m2ugen.checkpoint import atomic_write_text
    from m2ugen.media import save_audio

    out_dir.mkdir(parents=True, exist_ok=True)
    records = replies_done(out_dir, identity, lines) if identity is not None else []
    if identity is not None:
        atomic_write_text(out_dir / STATE, json.dumps(identity, indent=2) + "\n")
    if records:
        print(f"{out_dir / REPLIES}: {len(records)} of {len(lines)} replies already there "
              "(an earlier run of this batch); answering the rest", file=sys.stderr)
    replies = out_dir / REPLIES
    made = sum("wav" in r for r in records)
    with tqdm(total=len(lines), initial=len(records), desc="replies", unit="request",
              file=sys.stderr) as bar:
        for start in range(len(records), len(lines), batch_size):
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
            # after every batch: a stopped run keeps what it answered (and resumes there)
            atomic_write_text(replies, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                               for r in records))
            bar.update(len(chunk))
    if not replies.exists():  # every reply was already there: nothing was rewritten
        atomic_write_text(replies, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                           for r in records))
    print(f"wrote {replies} ({len(records)} replies, {made} with music)", file=sys.stderr)
    return replies
