"""Audio + caption records for fine-tuning a music decoder (`m2ugen train-decoder`).

Two layouts, named by `data_format`:

- ``mucaps``: the published MUCaps file ``{audio_file: caption}`` (read by
  `formats.read_dataset`, so its records are checked exactly as the stage trainer checks
  them);
- ``audioldm``: AudioLDM's metadata JSON ``{"data": [{"wav": file, "caption": text, ...}]}``,
  whose records may carry more columns, e.g. a per-clip quality score.

Paths are relative to `root` (default: the JSON file's directory). A bad record becomes a
`BadRecord` (file, index, path, reason) and the others go on, so one pass reports every
problem; `report_bad` then refuses or skips them as `spec.collect` does for the stages.
The optional quality tag (QA-MDT's idea): with a score column, each caption is prefixed
"high quality, " or "low quality, " by comparing the clip's score with a threshold, so
generation can ask for quality.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2ugen.data.formats import BadRecord, DatasetEntry, read_dataset
from m2ugen.errors import ConfigError, M2UGenError
from m2ugen.media import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS

log = logging.getLogger(__name__)

DATA_FORMATS = ("mucaps", "audioldm")
QUALITY_TAGS = ("high quality", "low quality")
_SHOWN_BAD = 5


@dataclass(frozen=True)
class AudioCaption:
    """One training clip: its audio file (absolute), caption, optional score, and
    `source` ("<file>#<index>") for messages."""

    audio: Path
    caption: str
    score: float | None = None
    source: str = ""


def read_audio_captions(file: str | Path, data_format: str, root: str | Path | None = None,
                        score_column: str | None = None,
                        ) -> tuple[list[AudioCaption], list[BadRecord]]:
    """(good records, bad records) of a MUCaps or AudioLDM-style metadata file."""
    file = Path(os.path.abspath(Path(file).expanduser()))
    base = Path(os.path.abspath(Path(root).expanduser())) if root else file.parent
    if data_format not in DATA_FORMATS:
        raise ConfigError(f"data_format {data_format!r}: use one of {', '.join(DATA_FORMATS)}")
    if file.is_dir():
        raise ConfigError(f"{file}: is a directory; data= takes the {data_format} JSON file")
    if not file.is_file():
        raise ConfigError(f"{file}: {data_format} file not found; check data=")
    if not base.is_dir():
        raise ConfigError(f"{base}: audio directory not found; fix audio_root=")
    if data_format == "mucaps":
        if score_column is not None:
            raise ConfigError("quality_column needs per-clip columns, which MUCaps files do "
                              "not have; use data_format=audioldm or drop quality_column")
        examples, bad = read_dataset(DatasetEntry(format="mucaps", file=file, root=base), 1)
        return [AudioCaption(ex.audio, ex.response, None, ex.source) for ex in examples], bad
    return _read_audioldm(file, base, score_column)


def _read_audioldm(file: Path, base: Path, score_column: str | None,
                   ) -> tuple[list[AudioCaption], list[BadRecord]]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file}: not valid JSON ({e}); fix the file") from e
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ConfigError(f"{file}: AudioLDM metadata is {{\"data\": [{{\"wav\": ..., "
                          "\"caption\": ...}, ...]}; for {audio_file: caption} use "
                          "data_format=mucaps")
    good: list[AudioCaption] = []
    bad: list[BadRecord] = []
    for i, rec in enumerate(data["data"]):
        try:
            good.append(_record(rec, i, file, base, score_column))
        except _Bad as e:
            bad.append(BadRecord(file, i, e.path, e.reason))
    return good, bad


class _Bad(Exception):
    def __init__(self, reason: str, path: Path | None = None) -> None:
        super().__init__(reason)
        self.reason, self.path = reason, path


def _record(rec: Any, i: int, file: Path, base: Path, score_column: str | None) -> AudioCaption:
    if not isinstance(rec, dict):
        raise _Bad(f"a record must be a JSON object, got {type(rec).__name__}")
    name, caption = rec.get("wav"), rec.get("caption")
    if not isinstance(name, str) or not name.strip():
        raise _Bad("'wav' must be a non-empty string (an audio file)")
    if not isinstance(caption, str) or not caption.strip():
        raise _Bad("'caption' must be a non-empty string")
    path = Path(os.path.abspath(base / name))
    if not path.is_file():
        raise _Bad("audio file not found", path)
    if path.stat().st_size == 0:
        raise _Bad("audio file is empty", path)
    if path.suffix.lower() not in AUDIO_EXTENSIONS | VIDEO_EXTENSIONS:
        raise _Bad(f"extension {path.suffix or '(none)'!r} is not audio", path)
    score = None
    if score_column is not None:
        value = rec.get(score_column)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise _Bad(f"{score_column!r} must be a finite number, got {value!r}", path)
        score = float(value)
    return AudioCaption(path, " ".join(caption.split()), score, f"{file}#{i}")


def report_bad(bad: list[BadRecord], skip_bad: bool, where: str) -> None:
    """Refuse to go on (naming the first bad record) or log the skipped ones, as the
    stage trainer does."""
    if bad and not skip_bad:
        raise M2UGenError(f"{len(bad)} bad record(s) in {where}; first: {bad[0]}; fix them or "
                          "pass skip_bad=true")
    if bad:
        shown = "; ".join(str(b) for b in bad[:_SHOWN_BAD])
        more = f" (and {len(bad) - _SHOWN_BAD} more)" if len(bad) > _SHOWN_BAD else ""
        log.warning("skipping %d bad record(s) in %s: %s%s", len(bad), where, shown, more)


def quality_caption(caption: str, score: float | None, threshold: float) -> str:
    """QA-MDT's quality tag: "high quality, <caption>" when score >= threshold, else "low
    quality, <caption>"; no score, no tag."""
    if score is None:
        return caption
    return f"{QUALITY_TAGS[0] if score >= threshold else QUALITY_TAGS[1]}, {caption}"
