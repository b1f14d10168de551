"""MUCaps step 01: collect audio from a local folder, or download YouTube clips with yt-dlp.

    python -m datasets_gen.MUCaps.01_collect --out WORK --audio-dir FOLDER
    python -m datasets_gen.MUCaps.01_collect --out WORK --youtube-ids audioset_segments.csv
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from datasets_gen.common.runner import main
from datasets_gen.common.shared_steps import collect_audio_step

STEP = collect_audio_step()


def run(argv: Sequence[str] | None = None) -> int:
    return main(STEP, argv)


if __name__ == "__main__":
    sys.exit(run())
