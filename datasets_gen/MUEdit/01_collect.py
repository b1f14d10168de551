"""MUEdit step 01: collect audio from a local folder (or YouTube ids, like MUCaps 01).

    python -m datasets_gen.MUEdit.01_collect --out WORK --audio-dir FOLDER
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
