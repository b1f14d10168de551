"""MUEdit step 03: caption both sides of every pair (each clip once) with the music
captioner (an audio-language or m2ugen model; see MUCaps 03).

    python -m datasets_gen.MUEdit.03_caption --out WORK [--model HUB_ID_OR_DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from datasets_gen.common.records import done_records
from datasets_gen.common.runner import Item, main
from datasets_gen.common.shared_steps import caption_music_step
from datasets_gen.MUEdit.pairs_file import read_pairs

NAME = "03_caption"


def items(args: argparse.Namespace) -> list[Item]:
    clips = done_records(args.out, "01_collect", NAME)
    used = sorted({p[side] for p in read_pairs(args.out, NAME) for side in ("source", "target")})
    return [Item(k, {"path": clips[k]["path"]}) for k in used]


STEP = caption_music_step(NAME, "01_collect")
STEP.items = items
STEP.help = "Caption both clips of every MUEdit pair."


def run(argv: Sequence[str] | None = None) -> int:
    return main(STEP, argv)


if __name__ == "__main__":
    sys.exit(run())
