"""Step 01 of MUImage / MUVideo: pair each image or video with its music by file stem.

`clip7.png` (or `clip7.mp4`) pairs with `clip7.wav` from `--audio-dir`. For video without
`--audio-dir`, the video's own sound track is the music: it is extracted to
`<out>/audio/<stem>.wav`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from datasets_gen.common.collect import by_stem, list_media
from datasets_gen.common.records import DatasetGenError
from datasets_gen.common.runner import Item, Skip, Step
from datasets_gen.common.shared_steps import each
from m2ugen.media import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    audio_duration,
    load_audio,
    load_image,
    save_audio,
)


def collect_pairs_step(kind: str) -> Step:
    """kind: "image" or "video"."""
    exts = IMAGE_EXTENSIONS if kind == "image" else VIDEO_EXTENSIONS

    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(f"--{kind}-dir", type=Path, dest="media_dir",
                       help=f"folder of {kind}s (searched recursively)")
        p.add_argument("--audio-dir", type=Path, help="folder of music files with the same "
                       "names" + (" (default: the videos' own sound)" if kind == "video" else ""))
        p.add_argument("--extract-rate", type=int, default=32000,
                       help="sample rate of music extracted from videos")

    def items(args: argparse.Namespace) -> list[Item]:
        if args.media_dir is None:
            raise DatasetGenError(f"--{kind}-dir is required")
        media_root = args.media_dir.resolve()
        media = by_stem(list_media(media_root, exts), str(media_root))
        if args.audio_dir is None and kind == "image":
            raise DatasetGenError("--audio-dir is required (the music paired with the images)")
        audio_root = (args.audio_dir or args.out / "audio").resolve()
        audio = {} if args.audio_dir is None else \
            by_stem(list_media(audio_root, AUDIO_EXTENSIONS), str(audio_root))
        return [Item(stem, {"input_file": rel, "input_root": str(media_root),
                            "output_file": audio.get(stem), "output_root": str(audio_root),
                            "extract": args.audio_dir is None, "rate": args.extract_rate})
                for stem, rel in media.items()]

    def one(it: Item) -> dict[str, Any] | Skip:
        d = it.data
        media_path = Path(d["input_root"]) / d["input_file"]
        if kind == "image":
            load_image(media_path)  # fail here, with the reason, rather than in step 03
        if d["extract"]:
            out_file = f"{it.key}.wav"
            save_audio(Path(d["output_root"]) / out_file, load_audio(media_path, d["rate"]),
                       d["rate"])
        elif d["output_file"] is None:
            return Skip("no music file with the same name")
        else:
            out_file = d["output_file"]
        out_path = Path(d["output_root"]) / out_file
        return {"input_file": d["input_file"], "input_root": d["input_root"],
                "input_path": str(media_path), "output_file": out_file,
                "output_root": d["output_root"], "output_path": str(out_path),
                "seconds": round(audio_duration(out_path), 3)}

    return Step("01_collect", f"Pair {kind}s with music by file name.", items,
                lambda args: each(one), add_args, batch_size=16)
