"""MUImage step 01: pair each image with its music by file name.

    python -m datasets_gen.MUImage.01_collect --out WORK --image-dir IMAGES --audio-dir MUSIC
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from datasets_gen.common.pair_by_stem import collect_pairs_step
from datasets_gen.common.runner import main

STEP = collect_pairs_step("image")


def run(argv: Sequence[str] | None = None) -> int:
    return main(STEP, argv)


if __name__ == "__main__":
    sys.exit(run())
