"""The facts of a synthetic dataset's media, read back from its true captions.

`m2ugen synth-data` (m2ugen/data/synth.py) states every fact in the captions it writes:
instrument, tempo and key of a clip ("A calm piano arpeggio in C# minor at 80 BPM."),
colour, shape and background of an image ("A red circle on a blue background."), and the
same plus the direction of a video ("A red circle moving upward on a blue background.").
The learning probes and `m2ugen eval synth` score answers against these facts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from m2ugen.data.synth import (
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
