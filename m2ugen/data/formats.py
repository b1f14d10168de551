"""Readers for the published dataset formats → `Example` records (ORIGINAL_M2UGEN.md §2).

One reader per format turns a JSON file (plus the media roots of its dataset-spec entry)
into `Example`s for a training stage (stages in parentheses):

- mucaps (1, 2, 3): ``{audio_file: caption}`` (stage 1: captioning; 2 and 3: the caption as a
  text-to-music request); image_captions, video_captions (1): the same,
  or COCO ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``
- musicqa (any): ``[{"audio_name", "conversation": [{"from": "human"|"gpt", "value"}]}]``
- alpaca (any): ``[{"instruction", "input", "output"}]`` or ``[{"conversation": [...]}]``
- instruct (any; MUImage / MUVideo / MUEdit): ``[{"input_file", "output_file",
  "conversation": [human (+ input_modality), gpt (+ caption, output_modality)]}]``

Records are validated one by one; a bad record becomes a :class:`BadRecord` (file,
index, media path, reason) and never stops the others, so one pass reports every
problem. A dataset *file* that is missing or not JSON is a `ConfigError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2ugen.config import MODALITIES
from m2ugen.data.example import Example
from m2ugen.errors import ConfigError, MediaError
from m2ugen.media import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    MediaSpec,
    load_media,
)

# Which stages each format feeds; image or video captioning after stage 1 makes no sense.
# mucaps in stage 3 keeps text-to-music requests (stage 2's rows) in instruction tuning:
# without them stage 3's LoRA forgets to answer a bare caption with [AUD] (tiny-trained:
# [AUD] emitted for 100 % of held-out captions after stage 2, 35 % after stage 3).
FORMAT_STAGES: dict[str, tuple[int, ...]] = {
    "mucaps": (1, 2, 3),
    "image_captions": (1,),
    "video_captions": (1,),
    "musicqa": (1, 2, 3),
    "alpaca": (1, 2, 3),
    "instruct": (1, 2, 3),
}
FORMATS = tuple(FORMAT_STAGES)
# Entry keys beyond format/file/weight that each format accepts.
FORMAT_KEYS: dict[str, tuple[str, ...]] = {
    "mucaps": ("root",),
    "image_captions": ("root",),
    "video_captions": ("root",),
    "musicqa": ("root",),
    "alpaca": (),
    "instruct": ("input_root", "output_root"),
}
# Extensions accepted per media slot: audio may come in a video container (mp4, webm).
_SLOT_EXTENSIONS = {
    "audio": AUDIO_EXTENSIONS | VIDEO_EXTENSIONS,
    "image": IMAGE_EXTENSIONS,
    "video": VIDEO_EXTENSIONS,
}
_CAPTION_SLOT = {"mucaps": "audio", "image_captions": "image", "video_captions": "video"}
# only proves a file decodes: MERT's rate, two frames, no length limit
_DECODE_SPEC = MediaSpec(sample_rate=24_000, num_frames=2, max_audio_seconds=None,
                         max_video_seconds=None)


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a spec: a format, its JSON file and media roots (absolute paths).

    Roots left as None default to the JSON file's directory. `weight` repeats the
    entry's examples that many times in `spec.collect` (a sampling weight).
    """

    format: str
    file: Path
    root: Path | None = None
    input_root: Path | None = None
    output_root: Path | None = None
    weight: int = 1


@dataclass(frozen=True)
class BadRecord:
    """A record that cannot be used: where it is and why."""

    source_file: Path
    index: int
    path: Path | None
    reason: str

    def __str__(self) -> str:
        where = f" {self.path}" if self.path is not None else ""
        return f"{self.source_file}#{self.index}{where}: {self.reason}"


def parse_stage(stage: int | str) -> int:
    """1, "1" or "stage1" -> 1; anything else is a ConfigError."""
    text = str(stage).strip().lower().removeprefix("stage")
    if text not in ("1", "2", "3"):
        raise ConfigError(f"stage {stage!r}: use 1, 2 or 3 (or stage1, stage2, stage3)")
    return int(text)


def check_stage(fmt: str, stage: int) -> None:
    """Raise ConfigError when `fmt` is unknown or does not feed `stage`."""
    if fmt not in FORMAT_STAGES:
        raise ConfigError(f"unknown dataset format {fmt!r}; use one of {', '.join(FORMATS)}")
    if stage not in FORMAT_STAGES[fmt]:
        used = ", ".join(f"stage{s}" for s in FORMAT_STAGES[fmt])
        raise ConfigError(f"format {fmt!r} is not used in stage{stage} (only in {used}); "
                          f"move the entry to the right stage")


class _Invalid(Exception):
    """A problem with one record; turned into a BadRecord by `_Reader.each`."""

    def __init__(self, reason: str, path: Path | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _text(rec: Any, key: str, where: str = "", *, allow_empty: bool = False) -> str:
    """`rec[key]` as a string; missing, non-string or blank values are invalid."""
    if not isinstance(rec, dict):
        raise _Invalid(f"{where or 'record'} must be a JSON object, got {type(rec).__name__}")
    if key not in rec:
        raise _Invalid(f"missing key {where}{key!r}")
    value = rec[key]
    if not isinstance(value, str):
        raise _Invalid(f"{where}{key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise _Invalid(f"{where}{key!r} is empty")
    return value


def _pairs(conv: Any) -> list[tuple[str, str]]:
    """A human/gpt alternating conversation -> [(human, gpt), ...]."""
    if not isinstance(conv, list) or not conv:
        raise _Invalid("'conversation' must be a non-empty list of turns")
    if len(conv) % 2:
        raise _Invalid(f"'conversation' has {len(conv)} turns; it must alternate "
                       "human, gpt and end with a gpt turn")
    values = []
    for t, turn in enumerate(conv):
        where = f"conversation[{t}]."
        who = _text(turn, "from", where)
        expected = "human" if t % 2 == 0 else "gpt"
        if who != expected:
            raise _Invalid(f"{where}'from' is {who!r}, expected {expected!r} (turns alternate "
                           "human, gpt)")
        values.append(_text(turn, "value", where))
    return list(zip(values[0::2], values[1::2], strict=True))


@dataclass
class _Reader:
    """State of one `read_dataset` call: the file, options, results and a media cache."""

    file: Path
    stage: int
    check_media: bool
    decode: bool
    examples: list[Example] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    _media_cache: dict[tuple[Path, str], str | None] = field(default_factory=dict)

    def each(self, records: Iterable[tuple[int, Any]],
             convert: Callable[[int, Any], list[Example]]) -> None:
        """Convert records one by one; a record is used whole or reported as bad."""
        for i, rec in records:
            try:
                self.examples.extend(convert(i, rec))
            except _Invalid as e:
                self.bad.append(BadRecord(self.file, i, e.path, _one_line(e.reason)))

    def source(self, index: int) -> str:
        return f"{self.file}#{index}"

    def media(self, root: Path, name: Any, slot: str, key: str) -> Path:
        """Absolute path of media file `name` under `root`, checked for use in `slot`."""
        if not isinstance(name, str) or not name.strip():
            raise _Invalid(f"{key!r} must be a non-empty string (a file under {root})")
        path = Path(os.path.abspath(root / name))
        if self.check_media:
            if (path, slot) not in self._media_cache:  # MusicQA reuses one file many times
                self._media_cache[path, slot] = self._media_problem(path, slot)
            reason = self._media_cache[path, slot]
            if reason is not None:
                raise _Invalid(reason, path)
        return path

    def _media_problem(self, path: Path, slot: str) -> str | None:
        try:
            if not path.exists():
                return f"{slot} file not found"
            if not path.is_file():
                return f"{slot} path is not a file"
            if path.stat().st_size == 0:
                return f"{slot} file is empty"
        except (OSError, ValueError) as e:  # e.g. a name too long or holding a NUL byte
            return f"{slot} path cannot be checked ({_one_line(str(e))})"
        if path.suffix.lower() not in _SLOT_EXTENSIONS[slot]:
            accepted = ", ".join(sorted(e.lstrip(".") for e in _SLOT_EXTENSIONS[slot]))
            return f"extension {path.suffix or '(none)'!r} is not {slot}; use one of {accepted}"
        if self.decode:
            try:
                load_media(slot, path, _DECODE_SPEC)
            except MediaError as e:
                return f"cannot decode: {e}"
        return None


def _load_json(path: Path, fmt: str, want: type) -> Any:
    """Parse a dataset file; a missing or malformed file is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{path}: {fmt} dataset file not found; check the 'file:' path of "
                          "this entry in the dataset spec")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid UTF-8 JSON ({_one_line(str(e))}); fix or "
                          "regenerate the file") from e
    if not isinstance(data, want):
        kind = "an object" if want is dict else "a list of records"
        raise ConfigError(f"{path}: a {fmt} file must hold {kind} at the top level, got "
                          f"{type(data).__name__}; check the 'format:' of this entry")
    return data


def _caption_items(r: _Reader, data: dict) -> list[tuple[int, Any]]:
    """(index, (file name or _Missing, caption)) per caption, from either layout.

    In the COCO layout, bad entries of "images" are reported here (index = their
    position in "images", reason prefixed "images[i]").
    """
    if "annotations" not in data:
        return list(enumerate(data.items()))
    images, annotations = data.get("images"), data["annotations"]
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise ConfigError(f"{r.file}: COCO layout needs lists 'images' and 'annotations'")
    names: dict[Any, str] = {}

    def image(i: int, rec: Any) -> list[Example]:
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), (int, str)) \
                or isinstance(rec.get("id"), bool):
            raise _Invalid(f"images[{i}] needs an integer or string 'id'")
        names[rec["id"]] = _text(rec, "file_name", f"images[{i}].")
        return []

    r.each(enumerate(images), image)
    items: list[tuple[int, Any]] = []
    for i, ann in enumerate(annotations):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        name = names.get(image_id) if isinstance(image_id, (int, str)) else None
        caption = ann.get("caption") if isinstance(ann, dict) else None
        items.append((i, (name if name is not None else _Missing(image_id), caption)))
    return items


@dataclass(frozen=True)
class _Missing:
    """An annotation whose image_id names no (valid) image entry."""

    image_id: Any


def _read_captions(r: _Reader, data: dict, entry: DatasetEntry) -> None:
    slot = _CAPTION_SLOT[entry.format]
    root = entry.root or entry.file.parent

    def convert(i: int, item: Any) -> list[Example]:
        name, caption = item
        if isinstance(name, _Missing):
            raise _Invalid(f"annotations[{i}]: image_id {name.image_id!r} matches no valid "
                           "entry of 'images'")
        if not isinstance(caption, str) or not caption.strip():
            raise _Invalid(f"caption of {name!r} must be a non-empty string")
        if r.stage in (2, 3):  # caption -> caption + [AUD]: the audio itself is not used
            if not isinstance(name, str) or not name.strip():
                raise _Invalid("the audio file name must be a non-empty string")
            return [Example(instruction=caption, response=caption, music_caption=caption,
                            source=r.source(i))]
        path = r.media(root, name, slot, "file")
        return [Example(instruction="", response=caption, source=r.source(i),
                        **{slot: path})]

    r.each(_caption_items(r, data), convert)


def _read_musicqa(r: _Reader, data: list, entry: DatasetEntry) -> None:
    root = entry.root or entry.file.parent

    def convert(i: int, rec: Any) -> list[Example]:
        _text(rec, "audio_name")
        pairs = _pairs(rec.get("conversation"))
        audio = r.media(root, rec["audio_name"], "audio", "audio_name")
        return [Example(instruction=h, response=g, history=pairs[:k], audio=audio,
                        source=r.source(i)) for k, (h, g) in enumerate(pairs)]

    r.each(enumerate(data), convert)


def _read_alpaca(r: _Reader, data: list, entry: DatasetEntry) -> None:
    def convert(i: int, rec: Any) -> list[Example]:
        if isinstance(rec, dict) and "conversation" in rec:
            pairs = _pairs(rec["conversation"])
            return [Example(instruction=h, response=g, history=pairs[:k], source=r.source(i))
                    for k, (h, g) in enumerate(pairs)]
        instruction = _text(rec, "instruction")
        extra = _text(rec, "input", allow_empty=True) if "input" in rec else ""
        if extra.strip():
            instruction = f"{instruction}\n\n{extra}"
        return [Example(instruction=instruction, response=_text(rec, "output"),
                        source=r.source(i))]

    r.each(enumerate(data), convert)


def _read_instruct(r: _Reader, data: list, entry: DatasetEntry) -> None:
    input_root = entry.input_root or entry.file.parent
    output_root = entry.output_root or entry.file.parent

    def convert(i: int, rec: Any) -> list[Example]:
        _text(rec, "input_file")
        conv = rec.get("conversation")
        if not isinstance(conv, list) or len(conv) != 2:
            raise _Invalid("'conversation' must be [human turn, gpt turn]")
        ((instruction, response),) = _pairs(conv)
        human, gpt = conv
        slot = _text(human, "input_modality", "conversation[0].")
        if slot not in MODALITIES:
            raise _Invalid(f"unknown input_modality {slot!r}; use one of "
                           f"{', '.join(MODALITIES)}")
        if "caption" in human:
            _text(human, "caption", "conversation[0].", allow_empty=True)
        music_caption = None
        if "output_modality" in gpt:
            out = _text(gpt, "output_modality", "conversation[1].")
            if out != "audio":
                raise _Invalid(f"unknown output_modality {out!r}; the only output is 'audio'")
            music_caption = _text(gpt, "caption", "conversation[1].")
            _text(rec, "output_file")
        path = r.media(input_root, rec["input_file"], slot, "input_file")
        music_file = None
        if music_caption is not None:
            music_file = r.media(output_root, rec["output_file"], "audio", "output_file")
        return [Example(instruction=instruction, response=response,
                        music_caption=music_caption, music_file=music_file,
                        source=r.source(i), **{slot: path})]

    r.each(enumerate(data), convert)


_READERS: dict[str, tuple[type, Callable[[_Reader, Any, DatasetEntry], None]]] = {
    "mucaps": (dict, _read_captions),
    "image_captions": (dict, _read_captions),
    "video_captions": (dict, _read_captions),
    "musicqa": (list, _read_musicqa),
    "alpaca": (list, _read_alpaca),
    "instruct": (list, _read_instruct),
}


def read_dataset(entry: DatasetEntry, stage: int | str, check_media: bool = True,
                 decode: bool = False) -> tuple[list[Example], list[BadRecord]]:
    """Read one dataset entry for `stage` -> (good examples, bad records).

    Every record is validated (types, required keys, non-empty strings, modality names
    and, with `check_media`, that each media file exists, is non-empty and has an
    extension of its slot). `decode=True` also decodes every media file with the
    `m2ugen.media` loaders (slow). Examples are returned once each: `entry.weight` is
    applied by `spec.collect`. A missing or malformed dataset file, an unknown format or
    a format not used in `stage` raises ConfigError.
    """
    stage = parse_stage(stage)
    check_stage(entry.format, stage)
    want, read = _READERS[entry.format]
    data = _load_json(entry.file, entry.format, want)
    if check_media and not (entry.format == "mucaps" and stage != 1):  # no audio after stage 1
        for key in FORMAT_KEYS[entry.format]:
            root = getattr(entry, key) or entry.file.parent
            if not root.is_dir():
                raise ConfigError(f"{root}: media directory not found; fix '{key}:' of the "
                                  f"{entry.format} entry for {entry.file}")
    reader = _Reader(file=entry.file, stage=stage, check_media=check_media, decode=decode)
    read(reader, data, entry)
    return reader.examples, reader.bad
