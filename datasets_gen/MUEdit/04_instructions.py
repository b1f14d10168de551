"""MUEdit step 04: write edit instructions (add / remove / replace) → MUEditInstructions.json.

    python -m datasets_gen.MUEdit.04_instructions --out WORK [--chat-model HUB_ID_OR_DIR]

Each pair gets an operation hint (add, remove or replace, by a stable hash of its key, so
the three are balanced) for the prompt templates in prompts/ beside this file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from datasets_gen.common.records import done_records
from datasets_gen.common.runner import Item, main, shard_of
from datasets_gen.common.shared_steps import instruction_step
from datasets_gen.MUEdit.pairs_file import read_pairs

NAME = "04_instructions"
OPERATIONS = ("add", "remove", "replace")


def items(args: argparse.Namespace) -> list[Item]:
    clips = done_records(args.out, "01_collect", NAME)
    caps = done_records(args.out, "03_caption", NAME)
    out = []
    for p in read_pairs(args.out, NAME):
        src, dst = p["source"], p["target"]
        if src in caps and dst in caps:
            out.append(Item(p["key"], {
                "input_file": clips[src]["file"], "input_root": clips[src]["root"],
                "output_file": clips[dst]["file"], "output_root": clips[dst]["root"],
                "input_caption": caps[src]["caption"], "music_caption": caps[dst]["caption"],
                "operation": OPERATIONS[shard_of(p["key"], len(OPERATIONS))]}))
    return out


STEP = instruction_step(NAME, "MUEdit", "audio", Path(__file__).parent / "prompts", items)


def run(argv: Sequence[str] | None = None) -> int:
    return main(STEP, argv)


if __name__ == "__main__":
    sys.exit(run())
