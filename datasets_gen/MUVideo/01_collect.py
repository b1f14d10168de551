"""MUVideo step 01: pair each video with its music by file name.

    python -m datasets_gen.MUVideo.01_collect --out WORK --video-dir VIDEOS --audio-dir MUSIC
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from datasets_gen.common.pair_by_stem import collect_pairs_step
from datasets_gen.common.runner import main

STEP = collect_pairs_step("video")


def run(argv: Sequence[str] | None = None) -> int:
    return main(STEP, argv)


if __name__ == "__main__":
    sys.exit(run())
