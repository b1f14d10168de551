"""Questions and answers about a synthetic dataset's media, from its true captions.

`m2ugen synth-data` (m2ugen/data/synth.py) states every fact in the captions it writes:
instrument, tempo and key of a clip ("A calm piano arpeggio in C# minor at 80 BPM."),
colour, shape and background of an image ("A red circle on a blue background."), and the
same plus the direction of a video ("A red circle moving upward on a blue background.").
This module reads the facts back (`read_items`), asks the questions a user would
(`QUESTIONS`, the first of each is what `m2ugen eval synth` asks), and writes them as
training records in the published formats (`write_qa`: MusicQA for music, MUImage- /
MUVideo-style instruct records with a text answer for images and videos), so a model
can learn to answer about images and videos, which the synthetic set only captions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from m2ugen.checkpoint import atomic_write_text
from m2ugen.data.synth import (
    _LABEL,
    _PHRASE,
    COLOURS,
    DIRECTIONS,
    INSTRUMENTS,
    NOTE_NAMES,
    SHAPES,
    TEMPOS,
)
from m2ugen.errors import ConfigError

_PHRASE_TO_INSTRUMENT = {phrase: inst for inst, phrase in _PHRASE.items()}
_CLIP = re.compile(r"^An? \w+ (?P<phrase>.+?) in (?P<tonic>[A-G][#b]?) (?P<mode>major|minor) "
                   r"at (?P<bpm>\d+) BPM\.$")
_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
_IMAGE = re.compile(rf"^An? (?P<colour>{_COLOUR}) (?P<shape>{_SHAPE}) on an? "
                    rf"(?P<bg>{_COLOUR}) background\.$")
_VIDEO = re.compile(rf"^An? (?P<colour>{_COLOUR}) (?P<shape>{_SHAPE}) moving "
                    rf"(?P<direction>{'|'.join(DIRECTIONS)}) on an? (?P<bg>{_COLOUR}) "
                    r"background\.$")


@dataclass(frozen=True)
class Item:
    """One synthetic medium and its facts (attribute → value)."""

    modality: str  # audio | image | video
    path: Path
    caption: str
    facts: dict[str, str | int]


def clip_facts(caption: str) -> dict[str, str | int]:
    """instrument, bpm, tonic, mode and key of a music caption."""
    m = _CLIP.match(caption)
    if m is None or m["phrase"] not in _PHRASE_TO_INSTRUMENT:
        raise ConfigError(f"not a synthetic music caption: {caption!r}")
    return {"instrument": _PHRASE_TO_INSTRUMENT[m["phrase"]], "bpm": int(m["bpm"]),
            "tonic": m["tonic"], "mode": m["mode"], "key": f"{m['tonic']} {m['mode']}"}


def image_facts(caption: str) -> dict[str, str | int]:
    m = _IMAGE.match(caption)
    if m is None:
        raise ConfigError(f"not a synthetic image caption: {caption!r}")
    return {"colour": m["colour"], "shape": m["shape"], "background": m["bg"]}


def video_facts(caption: str) -> dict[str, str | int]:
    m = _VIDEO.match(caption)
    if m is None:
        raise ConfigError(f"not a synthetic video caption: {caption!r}")
    return {"colour": m["colour"], "shape": m["shape"], "direction": m["direction"],
            "background": m["bg"]}


def read_items(root: str | Path) -> dict[str, list[Item]]:
    """Every medium of a `m2ugen synth-data` directory with its facts, per modality."""
    root = Path(root)
    try:
        mucaps = json.loads((root / "mucaps.json").read_text())
        coco = json.loads((root / "image_captions.json").read_text())
        videos = json.loads((root / "video_captions.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{root}: not a synthetic dataset written by `m2ugen synth-data` "
                          f"({e})") from e
    first: dict[int, str] = {}
    for ann in coco["annotations"]:  # the first caption of each image is the plain one
        first.setdefault(ann["image_id"], ann["caption"])
    return {
        "audio": [Item("audio", root / "audio" / f, c, clip_facts(c))
                  for f, c in mucaps.items()],
        "image": [Item("image", root / "images" / img["file_name"], first[img["id"]],
                       image_facts(first[img["id"]])) for img in coco["images"]],
        "video": [Item("video", root / "videos" / f, c, video_facts(c))
                  for f, c in videos.items()],
    }


# every value an attribute can take, in a fixed order (class indices of the probes)
VALUES: dict[str, tuple] = {
    "instrument": INSTRUMENTS,
    "bpm": TEMPOS,
    "tonic": NOTE_NAMES,
    "mode": ("major", "minor"),
    "key": tuple(f"{t} {m}" for t in NOTE_NAMES for m in ("major", "minor")),
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "background": tuple(COLOURS),
    "direction": tuple(DIRECTIONS),
}


@dataclass(frozen=True)
class Question:
    """Questions about one attribute of one modality, and the answer a model should give."""

    modality: str
    attribute: str
    asks: tuple[str, ...]  # phrasings; the first is the one evaluations ask
    answer: Callable[[dict[str, str | int]], str]


QUESTIONS: tuple[Question, ...] = (
    Question("audio", "instrument", ("What instrument is playing?", "What instrument is this?",
                                     "Which instrument do you hear?"),
             lambda f: f"It is played on {_LABEL.get(str(f['instrument']), f['instrument'])}."),
    Question("audio", "bpm", ("What is the tempo?", "How fast is this music?"),
             lambda f: f"The tempo is {f['bpm']} BPM."),
    Question("audio", "key", ("What key is it in?", "Which key is this music in?"),
             lambda f: f"It is in {f['key']}."),
    Question("image", "colour", ("What colour is the shape?", "What color is the shape?"),
             lambda f: f"The shape is {f['colour']}."),
    Question("image", "shape", ("What shape is it?", "Which shape is in the picture?"),
             lambda f: f"It is a {f['shape']}."),
    Question("image", "background", ("What colour is the background?",),
             lambda f: f"The background is {f['background']}."),
    Question("video", "direction", ("Which way does it move?", "Which way does the shape move?",
                                    "In which direction is it moving?"),
             lambda f: f"It moves {f['direction']}."),
    Question("video", "colour", ("What colour is the shape?", "What color is the moving shape?"),
             lambda f: f"The shape is {f['colour']}."),
)

QA_FILES = {"audio": "audio_qa.json", "image": "image_qa.json", "video": "video_qa.json"}
# dataset-spec entries of the records `write_qa` writes (paths relative to the data dir)
QA_SPEC_ENTRIES = (
    {"format": "musicqa", "file": QA_FILES["audio"], "root": "audio"},
    {"format": "instruct", "file": QA_FILES["image"], "input_root": "images"},
    {"format": "instruct", "file": QA_FILES["video"], "input_root": "videos"},
)


def write_qa(root: str | Path) -> dict[str, int]:
    """Write every question (each phrasing) about every medium of a `m2ugen synth-data`
    directory as training records beside it (`QA_FILES`); returns records per file."""
    root = Path(root)
    items = read_items(root)
    counts = {}
    for modality, name in QA_FILES.items():
        records = []
        for it in items[modality]:
            for q in QUESTIONS:
                if q.modality != modality:
                    continue
                for ask in q.asks:
                    turns = [{"from": "human", "value": ask}, {"from": "gpt",
                                                              "value": q.answer(it.facts)}]
                    if modality == "audio":
                        records.append({"audio_name": it.path.name, "conversation": turns})
                    else:
                        turns[0]["input_modality"] = modality
                        records.append({"input_file": it.path.name, "conversation": turns})
        atomic_write_text(root / name, json.dumps(records, indent=1) + "\n")
        counts[name] = len(records)
    return counts
