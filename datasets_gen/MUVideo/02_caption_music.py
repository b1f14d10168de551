"""MUVideo step 02: caption the music of each pair (an audio-language or m2ugen model).

    python -m datasets_gen.MUVideo.02_caption_music --out WORK [--model HUB_ID_OR_DIR]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from datasets_gen.common.runner import main
from datasets_gen.common.shared_steps import caption_music_step

STEP = caption_music_step("02_caption_music", "01_collect", path_field="output_path")


def run(argv: Sequence[str] | None = None) -> int:
    return main(STEP, argv)


if __name__ == "__main__":
    sys.exit(run())
