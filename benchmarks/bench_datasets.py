"""Items/s of each dataset step's processor (model load excluded): the measured table of
datasets_gen/README.md ("Cost per step").

    # first the offline walkthrough of datasets_gen/README.md with D=/tmp/dg, then:
    HF_HUB_OFFLINE=1 python benchmarks/bench_datasets.py /tmp/dg [LABEL-SUBSTRING ...]

Each step runs over all of its items in its default batch size, three passes; the best
pass is printed (the others are the same machine's other work).
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from datasets_gen.common.runner import parser_for, run_batch, select


def steps(d: Path) -> list[tuple[str, str, list]]:
    m, t = d / "models", ["--max-new-tokens", "8"]
    return [
        ("MUCaps 03 (m2ugen)", "MUCaps.03_caption",
         ["--out", d / "mucaps", "--model", m / "m2ugen", *t]),
        ("MUCaps 03 (Qwen2-Audio)", "MUCaps.03_caption",
         ["--out", d / "mucaps", "--model", m / "audio_captioner", *t]),
        ("MUImage 03 (BLIP)", "MUImage.03_caption_images",
         ["--out", d / "muimage", "--captioner", m / "blip", *t]),
        ("MUImage 04 (chat LLM)", "MUImage.04_instructions",
         ["--out", d / "muimage", "--chat-model", m / "chat", *t]),
        ("MUVideo 03 (TimeSformer-GPT-2)", "MUVideo.03_caption_videos",
         ["--out", d / "muvideo", "--captioner", m / "video_captioner", *t]),
        ("MUEdit 02 (MERT + tempo/key)", "MUEdit.02_pairs",
         ["--out", d / "muedit", "--encoder", m / "m2ugen", "--num-pairs", "3",
          "--clip-seconds", "2"]),
        ("MUVideo 01 (sound track)", "MUVideo.01_collect",
         ["--out", d / "muvideo", "--video-dir", d / "media" / "videos"]),
    ]


def main() -> None:
    if len(sys.argv) < 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: bench_datasets.py WALKTHROUGH_DIR [LABEL ...] (run the offline "
                 "walkthrough of datasets_gen/README.md into that directory first)")
    d, only = Path(sys.argv[1]), sys.argv[2:]
    for label, module, argv in steps(d):
        if only and not any(o in label for o in only):
            continue
        step = importlib.import_module(f"datasets_gen.{module}").STEP
        args = parser_for(step).parse_args([str(a) for a in argv])
        items = select(step.items(args), None, 0, 1)
        process = step.processor(args)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(0, len(items), args.batch_size):
                records = run_batch(process, items[i:i + args.batch_size])
                failed = [r for r in records if "error" in r]
                if failed:
                    sys.exit(f"{label}: {len(failed)} items failed, e.g. {failed[0]}")
            best = min(best, time.perf_counter() - t0)
        print(f"{label:34s} {len(items):3d} items, batch {args.batch_size:3d}: "
              f"{len(items) / best:7.2f} items/s ({best / len(items) * 1000:.0f} ms/item)",
              flush=True)


if __name__ == "__main__":
    main()
