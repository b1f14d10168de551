"""MUCaps step 02: keep the clips whose AudioSet labels fall in the ontology's music subtree.

    python -m datasets_gen.MUCaps.02_filter --out WORK --labels balanced_train_segments.csv \
        --ontology ontology.json

`--labels` is an AudioSet-style CSV (`YTID, start_seconds, end_seconds, "label,label"`,
`#` comment lines); a clip's id is its file stem (also tried: without a trailing
`_<start>`). `--ontology` is AudioSet's ontology.json; everything under `--music-root`
(default /m/04rlf "Music") counts as music. Other clips are recorded as skipped, with why.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets_gen.common.records import DatasetGenError, done_records
from datasets_gen.common.runner import Item, Processor, Skip, Step, main

MUSIC_ROOT = "/m/04rlf"


def music_labels(ontology: Path, root: str = MUSIC_ROOT) -> dict[str, str]:
    """{label id: name} of `root` and all its descendants."""
    try:
        nodes = {n["id"]: n for n in json.loads(ontology.read_text(encoding="utf-8"))}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetGenError(f"{ontology}: not an AudioSet ontology.json ({e})") from e
    if root not in nodes:
        raise DatasetGenError(f"{ontology}: has no label {root}; pass --music-root")
    out, todo = {}, [root]
    while todo:
        node = nodes[todo.pop()]
        if node["id"] not in out:
            out[node["id"]] = node.get("name", node["id"])
            todo += [c for c in node.get("child_ids", []) if c in nodes]
    return out


def read_labels(path: Path) -> dict[str, list[str]]:
    """{clip id: [label ids]} from an AudioSet segments CSV."""
    out: dict[str, list[str]] = {}
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.reader(f, skipinitialspace=True), 1):
                if not row or row[0].startswith("#"):
                    continue
                if len(row) < 4:
                    raise DatasetGenError(f"{path}:{n}: expected YTID, start, end, labels")
                out[row[0].strip()] = [x.strip() for x in row[3].split(",") if x.strip()]
    except OSError as e:
        raise DatasetGenError(f"{path}: cannot read the labels CSV ({e})") from e
    return out


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", type=Path, help="AudioSet-style segments CSV")
    p.add_argument("--ontology", type=Path, help="AudioSet ontology.json")
    p.add_argument("--music-root", default=MUSIC_ROOT)


def _items(args: argparse.Namespace) -> list[Item]:
    return [Item(k, r) for k, r in done_records(args.out, "01_collect", "02_filter").items()]


def _processor(args: argparse.Namespace) -> Processor:
    if args.labels is None or args.ontology is None:
        raise DatasetGenError("--labels CSV and --ontology JSON are required")
    music = music_labels(args.ontology, args.music_root)
    labels = read_labels(args.labels)

    def one(it: Item) -> dict[str, Any] | Skip:
        cid = it.data["clip_id"]
        base, _, start = cid.rpartition("_")
        ids = labels.get(cid, labels.get(base) if start.isdigit() else None)
        if ids is None:
            return Skip("no AudioSet labels for this clip id")
        names = [music[x] for x in ids if x in music]
        if not names:
            return Skip("no music label")
        return {**{k: it.data[k] for k in ("path", "file", "root")}, "music_labels": names}

    return lambda batch: [one(it) for it in batch]


STEP = Step("02_filter", "Keep music clips using AudioSet labels.", _items, _processor, _args,
            batch_size=256)


def run(argv: Sequence[str] | None = None) -> int:
    return main(STEP, argv)


if __name__ == "__main__":
    sys.exit(run())
