"""Inputs of the instruction steps: join the collected pairs with both captions."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from datasets_gen.common.records import done_records
from datasets_gen.common.runner import Item


def joined_items(step: str, music_step: str,
                 media_step: str) -> Callable[[argparse.Namespace], list[Item]]:
    """Items for keys captioned by both `music_step` and `media_step` (MUImage / MUVideo)."""
    def items(args: argparse.Namespace) -> list[Item]:
        pairs = done_records(args.out, "01_collect", step)
        music = done_records(args.out, music_step, step)
        media = done_records(args.out, media_step, step)
        keep = ("input_file", "input_root", "output_file", "output_root")
        return [Item(k, {**{f: pairs[k][f] for f in keep}, "input_caption": media[k]["caption"],
                         "music_caption": music[k]["caption"]})
                for k in sorted(pairs) if k in music and k in media]
    return items
