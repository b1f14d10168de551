"""MUCaps step 03: caption the kept music → MUCapsCaptions.json.

    python -m datasets_gen.MUCaps.03_caption --out WORK [--model Qwen/Qwen2-Audio-7B-Instruct]
    python -m datasets_gen.MUCaps.03_caption --out WORK --model ckpts/my-m2ugen-model

`--model`: a transformers audio-language model (hub id or directory) or an m2ugen model,
told apart by its config (common/audio_language.py).

Final files: `MUCapsCaptions.json` ({audio file relative to the audio root: caption}) and
`MUCaps.dataset.json` (its dataset-spec entry for training: format, file, root).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from datasets_gen.common.records import Record, done_records, write_json
from datasets_gen.common.runner import main
from datasets_gen.common.shared_steps import caption_music_step


def finalize(args: argparse.Namespace, records: dict[str, Record]) -> list[Path]:
    kept = done_records(args.out, "02_filter", "03_caption")
    done = {k: r for k, r in records.items() if "error" not in r and "skipped" not in r}
    data = args.out / "MUCapsCaptions.json"
    write_json(data, {kept[k]["file"]: r["caption"] for k, r in done.items() if k in kept})
    roots = sorted({kept[k]["root"] for k in done if k in kept})
    meta = args.out / "MUCaps.dataset.json"
    write_json(meta, {"format": "mucaps", "file": str(data.resolve()),
                      "root": roots[0] if roots else None})
    return [data, meta]


STEP = caption_music_step("03_caption", "02_filter")
STEP.finalize = finalize


def run(argv: Sequence[str] | None = None) -> int:
    return main(STEP, argv)


if __name__ == "__main__":
    sys.exit(run())
