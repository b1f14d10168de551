"""The one step runner every numbered step uses: resumable, sharded, batched, atomic.

A step lists its input items (each with a stable string key), and processes batches of
them into one outcome per item: a result dict, a :class:`Skip` (deliberately not
produced, with the reason) or an exception (the item failed; the reason is recorded).
The runner
  - skips keys already done (any shard's file counts), retries earlier failures,
  - applies ``--limit`` to the sorted input, then keeps the keys of ``--shard i`` of
    ``--num-shards n`` (stable hash of the key), so merged shards equal one unsharded run,
  - appends each batch's records to its JSONL file with fsync (records.py),
  - when a whole batch raises, re-runs its items one by one so one bad input cannot sink
    the others, and records each failure with its reason,
  - prints a summary of done / skipped / failed with reasons, and
  - merges all shard files into ``<step>.json`` (temp-then-rename) and lets the step write
    its final dataset files: automatically for unsharded runs, with ``--merge`` otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from datasets_gen.common.records import (
    DatasetGenError,
    Record,
    RecordWriter,
    read_records,
    shard_path,
    status,
    write_json,
)
from m2ugen.errors import M2UGenError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    key: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skip:
    reason: str


Outcome = dict[str, Any] | Skip | Exception
Processor = Callable[[list[Item]], list[Outcome]]


@dataclass
class Step:
    """One numbered step. `processor(args)` is only called when there is work to do, so
    models load only then. `finalize(args, records)` writes the final dataset files from
    the merged records (every key's best record) and returns their paths."""

    name: str
    help: str
    items: Callable[[argparse.Namespace], list[Item]]
    processor: Callable[[argparse.Namespace], Processor]
    add_args: Callable[[argparse.ArgumentParser], None] | None = None
    finalize: Callable[[argparse.Namespace, dict[str, Record]], list[Path]] | None = None
    batch_size: int = 8


@dataclass
class Summary:
    done: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)

    def line(self, name: str) -> str:
        def reasons(c: Counter[str]) -> str:
            top = "; ".join(f"{r} ×{n}" for r, n in c.most_common(5))
            more = f"; … {len(c) - 5} more reasons" if len(c) > 5 else ""
            return f" ({top}{more})" if c else ""
        return (f"{name}: {self.done} done, {sum(self.skipped.values())} skipped"
                f"{reasons(self.skipped)}, {sum(self.failed.values())} failed"
                f"{reasons(self.failed)}")


def shard_of(key: str, num_shards: int) -> int:
    """Stable across machines and Python runs (unlike hash())."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % num_shards


def select(items: Sequence[Item], limit: int | None, shard: int, num_shards: int) -> list[Item]:
    """Sorted by key, the first `limit`, then this shard's part. Duplicate keys are an error."""
    ordered = sorted(items, key=lambda it: it.key)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.key == b.key:
            raise DatasetGenError(f"two inputs share the key {a.key!r}; keys must be unique "
                                  "(rename one of the files)")
    if limit is not None:
        ordered = ordered[:limit]
    return [it for it in ordered if shard_of(it.key, num_shards) == shard]


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "(no message)"
    return f"{type(e).__name__}: {text[:400]}"


def _to_record(item: Item, outcome: Outcome) -> Record:
    if isinstance(outcome, Skip):
        return {"key": item.key, "skipped": outcome.reason}
    if isinstance(outcome, Exception):
        return {"key": item.key, "error": _reason(outcome)}
    if "error" in outcome or "skipped" in outcome or "key" in outcome:
        raise ValueError(f"a step result may not use the reserved fields key/error/skipped: "
                         f"{sorted(outcome)}")
    return {"key": item.key, **outcome}


def run_batch(process: Processor, batch: list[Item]) -> list[Record]:
    """Records for `batch`; a batch-wide exception falls back to one item at a time."""
    try:
        outcomes = process(batch)
        if len(outcomes) != len(batch):
            raise RuntimeError(f"step returned {len(outcomes)} outcomes for {len(batch)} items")
    except Exception as e:  # noqa: BLE001 - isolated below, each item's reason recorded
        if len(batch) == 1:
            return [_to_record(batch[0], e)]
        log.warning("batch of %d failed (%s); retrying its items one by one",
                    len(batch), _reason(e))
        return [rec for it in batch for rec in run_batch(process, [it])]
    return [_to_record(it, o) for it, o in zip(batch, outcomes, strict=True)]


def merge(step: Step, args: argparse.Namespace) -> list[Path]:
    """All shards' records → `<step>.json` (+ the step's final files), atomically."""
    records = dict(sorted(read_records(args.out, step.name).items()))
    path = args.out / f"{step.name}.json"
    write_json(path, records)
    written = [path]
    if step.finalize is not None:
        written += step.finalize(args, records)
    counts = Counter(status(r) for r in records.values())
    print(f"{step.name}: merged {len(records)} records ({counts['done']} done, "
          f"{counts['skipped']} skipped, {counts['failed']} failed) -> "
          + ", ".join(str(p) for p in written))
    return written


def execute(step: Step, args: argparse.Namespace) -> Summary:
    """Process this shard's pending items; returns the summary (also printed)."""
    items = select(step.items(args), args.limit, args.shard, args.num_shards)
    existing = read_records(args.out, step.name)
    summary = Summary()
    pending = []
    for it in items:
        old = existing.get(it.key)
        if old is not None and (status(old) != "failed" or args.skip_failed):
            summary.skipped[f"already {status(old)}"] += 1
        else:
            pending.append(it)
    if pending:
        process = step.processor(args)
        out = shard_path(args.out, step.name, args.shard, args.num_shards)
        with RecordWriter(out) as writer, tqdm(total=len(pending), desc=step.name,
                                               unit="item", file=sys.stderr) as bar:
            for i in range(0, len(pending), args.batch_size):
                records = run_batch(process, pending[i:i + args.batch_size])
                writer.write(records)
                for r in records:
                    if status(r) == "done":
                        summary.done += 1
                    elif status(r) == "skipped":
                        summary.skipped[r["skipped"]] += 1
                    else:
                        summary.failed[r["error"]] += 1
                bar.update(len(records))
    print(summary.line(step.name + (f" [shard {args.shard}/{args.num_shards}]"
                                    if args.num_shards > 1 else "")))
    return summary


def parser_for(step: Step) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {sys.modules['__main__'].__spec__.name}"
                                if getattr(sys.modules["__main__"], "__spec__", None)
                                else step.name, description=step.help)
    p.add_argument("--out", type=Path, required=True,
                   help="work directory of this dataset (shared by all its steps)")
    p.add_argument("--shard", type=int, default=0, help="this machine's shard index (0-based)")
    p.add_argument("--num-shards", type=int, default=1, help="number of shards in all")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N inputs (sorted by key, before sharding)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda:1 …")
    p.add_argument("--batch-size", type=int, default=step.batch_size)
    p.add_argument("--merge", action="store_true",
                   help="only merge the shards' outputs and write the final files")
    p.add_argument("--skip-failed", action="store_true",
                   help="do not retry items that failed in an earlier run")
    if step.add_args is not None:
        step.add_args(p)
    return p


def main(step: Step, argv: Sequence[str] | None = None) -> int:
    """Command-line entry of a step. Exit codes: 0 ok, 1 every item failed, 2 user error."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-feature probing
    args = parser_for(step).parse_args(argv)
    try:
        if args.num_shards < 1 or not 0 <= args.shard < args.num_shards:
            raise DatasetGenError(f"--shard {args.shard} --num-shards {args.num_shards}: need "
                                  "0 <= shard < num-shards")
        if args.batch_size < 1 or (args.limit is not None and args.limit < 0):
            raise DatasetGenError("--batch-size must be >= 1 and --limit >= 0")
        args.out.mkdir(parents=True, exist_ok=True)
        if args.merge:
            merge(step, args)
            return 0
        summary = execute(step, args)
        if args.num_shards == 1:
            merge(step, args)
        else:
            print(f"{step.name}: shard {args.shard} of {args.num_shards} finished; when every "
                  "shard has, run this step again with --merge")
    except M2UGenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if summary.failed and not summary.done else 0


def resolve_device(name: str) -> str:
    """'auto' → 'cuda' when torch sees a GPU, else 'cpu'; anything else as given."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DatasetGenError(f"--device {name}: torch sees no CUDA GPU; use --device cpu")
    return name
