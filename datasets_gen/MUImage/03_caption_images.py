"""MUImage step 03: caption each image (default captioner in --help).

    python -m datasets_gen.MUImage.03_caption_images --out WORK [--captioner HUB_ID_OR_DIR]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from datasets_gen.common.runner import main
from datasets_gen.common.shared_steps import caption_media_step

STEP = caption_media_step("03_caption_images", "01_collect", "image")


def run(argv: Sequence[str] | None = None) -> int:
    return main(STEP, argv)


if __name__ == "__main__":
    sys.exit(run())
