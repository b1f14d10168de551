"""MUImage step 04: write instruction/answer pairs with a chat LLM → MUImageInstructions.json.

    python -m datasets_gen.MUImage.04_instructions --out WORK [--chat-model HUB_ID_OR_DIR]

Prompt templates: prompts/instruction.txt and prompts/answer.txt beside this file
(override with --templates). Final files: `MUImageInstructions.json` (the training schema)
and `MUImage.dataset.json` (input and output roots).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from datasets_gen.common.instruction_items import joined_items
from datasets_gen.common.runner import main
from datasets_gen.common.shared_steps import instruction_step

NAME = "04_instructions"
STEP = instruction_step(NAME, "MUImage", "image", Path(__file__).parent / "prompts",
                        joined_items(NAME, "02_caption_music", "03_caption_images"))


def run(argv: Sequence[str] | None = None) -> int:
    return main(STEP, argv)


if __name__ == "__main__":
    sys.exit(run())
