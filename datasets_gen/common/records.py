"""Step outputs on disk: append-only JSONL files (one per shard) with fsync per batch.

A record is one JSON line keyed by "key":
  - done:    {"key": k, ...result fields}
  - skipped: {"key": k, "skipped": reason}   (deliberately not produced, e.g. not music)
  - failed:  {"key": k, "error": "Type: message"}
Unsharded runs write `<step>.jsonl`, shard i of n writes `<step>.shard-i-of-n.jsonl`.
Reading merges every file of a step: a done/skipped record beats a failure, and among
records of the same kind the later one wins. A line torn by a crash (no final newline)
is ignored when reading and cut off before appending.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from m2ugen.checkpoint import atomic_write_text
from m2ugen.errors import M2UGenError

log = logging.getLogger(__name__)

Record = dict[str, Any]


class DatasetGenError(M2UGenError):
    """A user-caused problem in a dataset step (missing input, step run out of order, …)."""


def shard_path(out: Path, step: str, shard: int, num_shards: int) -> Path:
    if num_shards == 1:
        return out / f"{step}.jsonl"
    return out / f"{step}.shard-{shard}-of-{num_shards}.jsonl"


def step_files(out: Path, step: str) -> list[Path]:
    """Every JSONL file of `step` in `out` (unsharded first, then shards by name)."""
    files = [out / f"{step}.jsonl"] if (out / f"{step}.jsonl").is_file() else []
    return files + sorted(out.glob(f"{step}.shard-*-of-*.jsonl"))


def status(record: Record) -> str:
    if "error" in record:
        return "failed"
    if "skipped" in record:
        return "skipped"
    return "done"


def _read_lines(path: Path) -> Iterable[Record]:
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    if tail.strip():
        log.warning("%s: ignoring a torn last line (%d bytes, crash while writing)",
                    path, len(tail))
    for n, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetGenError(f"{path}:{n}: not valid JSON ({e}); fix or delete that "
                                  "line and rerun the step") from e
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            raise DatasetGenError(f"{path}:{n}: a record must be an object with a string "
                                  "'key'; fix or delete that line")
        yield record


def read_records(out: Path, step: str) -> dict[str, Record]:
    """The best record per key over all files of `step` (see module docstring)."""
    best: dict[str, Record] = {}
    for path in step_files(out, step):
        for record in _read_lines(path):
            old = best.get(record["key"])
            if old is None or status(record) != "failed" or status(old) == "failed":
                best[record["key"]] = record
    return best


def done_records(out: Path, step: str, required_by: str) -> dict[str, Record]:
    """Done records of an earlier step; a clear error when that step has not run."""
    if not step_files(out, step):
        raise DatasetGenError(f"{out}: no output of step {step}; run it before {required_by} "
                              "(with the same --out)")
    return {k: r for k, r in sorted(read_records(out, step).items()) if status(r) == "done"}


class RecordWriter:
    """Appends records to one JSONL file; each `write` is flushed and fsynced."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            _cut_torn_tail(path)
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def write(self, records: list[Record]) -> None:
        if not records:
            return
        self._f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cut_torn_tail(path: Path) -> None:
    """Drop a partial last line left by a crash, so the next append starts a fresh line."""
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            log.warning("%s: cutting a torn last line (%d bytes)", path, len(data) - end)
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: Path, obj: Any) -> None:
    """A final JSON file, written temp-then-rename (readers never see half a file)."""
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")
