"""MUVideo step 04: write instruction/answer pairs with a chat LLM → MUVideoInstructions.json.

    python -m datasets_gen.MUVideo.04_instructions --out WORK [--chat-model HUB_ID_OR_DIR]

Prompt templates: prompts/instruction.txt and prompts/answer.txt beside this file
(override with --templates). Final files: `MUVideoInstructions.json` (the training schema)
and `MUVideo.dataset.json` (input and output roots).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from datasets_gen.common.instruction_items import joined_items
from datasets_gen.common.runner import main
from datasets_gen.common.shared_steps import instruction_step

NAME = "04_instructions"
STEP = instruction_step(NAME, "MUVideo", "video", Path(__file__).parent / "prompts",
                        joined_items(NAME, "02_caption_music", "03_caption_videos"))


def run(argv: Sequence[str] | None = None) -> int:
    return main(STEP, argv)


if __name__ == "__main__":
    sys.exit(run())
