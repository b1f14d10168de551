"""The YAML dataset spec: which datasets feed which training stage.

A spec maps ``stage1`` / ``stage2`` / ``stage3`` to a list of entries::

    stage1:
      - {format: mucaps, file: mucaps.json, root: audio}
      - {format: image_captions, file: coco/captions.json, root: coco/images}
    stage3:
      - {format: instruct, file: muedit.json, input_root: audio, output_root: edited,
         weight: 2}

Entry keys: ``format`` (one of `formats.FORMATS`), ``file`` (the JSON file), the media
roots the format uses (``root``; ``input_root`` and ``output_root`` for ``instruct``;
none for ``alpaca``) and ``weight`` (an int >= 1: how many times the entry's examples
are repeated). Relative paths resolve against the YAML file's directory; an omitted root
is the JSON file's directory. See configs/data_synth.yaml for a complete example.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from m2ugen.data.example import Example
from m2ugen.data.formats import (
    FORMAT_KEYS,
    FORMATS,
    BadRecord,
    DatasetEntry,
    check_stage,
    parse_stage,
    read_dataset,
)
from m2ugen.errors import ConfigError, M2UGenError

log = logging.getLogger(__name__)

STAGE_KEYS = ("stage1", "stage2", "stage3")
_COMMON_KEYS = ("format", "file", "weight")
_SHOWN_BAD = 5  # bad records listed in the skip-bad warning
MAX_WEIGHT = 1000


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec: the entries of each stage, all paths absolute."""

    path: Path
    stages: dict[int, tuple[DatasetEntry, ...]]

    def entries(self, stage: int | str) -> list[DatasetEntry]:
        """The entries of `stage` (1, 2, 3 or "stage1".."stage3"); [] when it has none."""
        return list(self.stages.get(parse_stage(stage), ()))


def _resolve(base: Path, value: Any, where: str, key: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key!r} must be a non-empty path string, got {value!r}")
    return Path(os.path.abspath(base / Path(value).expanduser()))  # no '..' in messages


def _entry(raw: Any, base: Path, stage: int, where: str) -> DatasetEntry:
    """Validate one entry mapping and resolve its paths against `base`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: an entry must be a mapping like "
                          "{format: mucaps, file: captions.json, root: audio}")
    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise ConfigError(f"{where}: unknown or missing format {fmt!r}; use one of "
                          f"{', '.join(FORMATS)}")
    allowed = _COMMON_KEYS + FORMAT_KEYS[fmt]
    unknown = sorted(set(raw) - set(allowed), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for format "
                          f"{fmt!r}; valid keys: {', '.join(allowed)}")
    if "file" not in raw:
        raise ConfigError(f"{where}: missing 'file' (the {fmt} JSON file)")
    try:
        check_stage(fmt, stage)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    weight = raw.get("weight", 1)
    # a repeat factor: each repeat is a list entry per example, so a huge one is a typo that
    # would exhaust memory rather than a wish
    if (not isinstance(weight, int) or isinstance(weight, bool)
            or not 1 <= weight <= MAX_WEIGHT):
        raise ConfigError(f"{where}: 'weight' must be an integer from 1 to {MAX_WEIGHT} (a "
                          f"repeat factor), got {weight!r}")
    roots = {k: _resolve(base, raw[k], where, k) for k in FORMAT_KEYS[fmt] if k in raw}
    file = _resolve(base, raw["file"], where, "file")
    # the wrong kind of path: say so now ("not found" later would send the user looking)
    if file.is_dir():
        raise ConfigError(f"{where}: 'file' {file} is a directory; name the {fmt} JSON file "
                          "in it")
    for key, root in roots.items():
        if root.exists() and not root.is_dir():
            raise ConfigError(f"{where}: {key!r} {root} is a file; it must be the directory "
                              "holding the media")
    return DatasetEntry(format=fmt, file=file, weight=weight, **roots)


def parse_spec(data: Any, base: Path, name: str) -> DatasetSpec:
    """Build a DatasetSpec from already-parsed YAML; `name` is used in messages."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{name}: a dataset spec maps {', '.join(STAGE_KEYS)} to lists of "
                          "entries; see configs/data_synth.yaml")
    unknown = sorted(set(data) - set(STAGE_KEYS), key=str)
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {', '.join(map(repr, unknown))}; valid "
                          f"keys: {', '.join(STAGE_KEYS)}")
    stages: dict[int, tuple[DatasetEntry, ...]] = {}
    for key, raw_entries in data.items():
        if not isinstance(raw_entries, list):
            raise ConfigError(f"{name}: {key} must be a list of entries, got "
                              f"{type(raw_entries).__name__}")
        stage = parse_stage(key)
        stages[stage] = tuple(_entry(raw, base, stage, f"{name}: {key}[{i}]")
                              for i, raw in enumerate(raw_entries))
    return DatasetSpec(path=Path(name), stages=stages)


def load_spec(path: str | Path) -> DatasetSpec:
    """Read a YAML dataset spec; any problem is a ConfigError naming the file."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; data= takes the dataset spec file in it, "
                          "e.g. dataset.yaml")
    if not path.is_file():
        raise ConfigError(f"{path}: dataset spec not found; check the path (write a sample "
                          "with `m2ugen synth-data data/synth`)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from e
    return parse_spec(data, path.parent, str(path))


def read_stage(spec: DatasetSpec, stage: int | str, check_media: bool = True,
               decode: bool = False) -> tuple[list[Example], list[BadRecord]]:
    """All good examples of `stage` (weights applied) and all bad records."""
    stage = parse_stage(stage)
    entries = spec.entries(stage)
    if not entries:
        raise ConfigError(f"{spec.path}: no entries for stage{stage}; add a 'stage{stage}:' "
                          "list of datasets")
    examples: list[Example] = []
    bad: list[BadRecord] = []
    for entry in entries:
        good, wrong = read_dataset(entry, stage, check_media=check_media, decode=decode)
        examples.extend(good * entry.weight)  # same objects repeated: treat them as read-only
        bad.extend(wrong)
    return examples, bad


def collect(spec: DatasetSpec, stage: int | str, skip_bad: bool, check_media: bool = True,
            decode: bool = False) -> list[Example]:
    """Read every entry of `stage`; report bad records or refuse to go on.

    With `skip_bad`, bad records are logged (count and the first few) and left out;
    without it, any bad record raises M2UGenError naming the first one. Having no usable
    example at all is an error either way.
    """
    stage = parse_stage(stage)
    examples, bad = read_stage(spec, stage, check_media=check_media, decode=decode)
    if bad and not skip_bad:
        raise M2UGenError(f"{len(bad)} bad record(s) in the stage{stage} data of {spec.path}; "
                          f"first: {bad[0]}; fix them or pass --skip-bad")
    if bad:
        shown = "; ".join(str(b) for b in bad[:_SHOWN_BAD])
        more = f" (and {len(bad) - _SHOWN_BAD} more)" if len(bad) > _SHOWN_BAD else ""
        log.warning("skipping %d bad record(s) in the stage%d data: %s%s",
                    len(bad), stage, shown, more)
    if not examples:
        raise M2UGenError(f"{spec.path}: stage{stage} has no usable examples; check the "
                          "dataset files and media roots")
    return examples
