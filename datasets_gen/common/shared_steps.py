"""Step factories shared by the pipelines: collect audio, caption music / images / video,
and write instruction–answer conversations with the chat LLM."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets_gen.common.audio_language import (
    AUDIO_CAPTIONER,
    AUDIO_LANGUAGE_MODELS,
    DTYPES,
    music_captioner,
)
from datasets_gen.common.captioners import (
    IMAGE_CAPTIONER,
    MUSIC_PROMPT,
    VIDEO_CAPTIONER,
    ImageCaptioner,
    VideoCaptioner,
)
from datasets_gen.common.chat_llm import CHAT_LLM, ChatLLM, load_template
from datasets_gen.common.collect import (
    download_clip,
    list_media,
    read_youtube_ids,
    youtube_unavailable,
)
from datasets_gen.common.records import DatasetGenError, Record, done_records, write_json
from datasets_gen.common.runner import Item, Outcome, Processor, Step, resolve_device
from datasets_gen.common.trust import add_trust_flag
from m2ugen.media import AUDIO_EXTENSIONS, audio_duration


def each(fn: Callable[[Item], dict[str, Any]]) -> Processor:
    """A processor applying `fn` item by item; an item's exception is its outcome."""
    def process(batch: list[Item]) -> list[Outcome]:
        out: list[Outcome] = []
        for it in batch:
            try:
                out.append(fn(it))
            except Exception as e:  # noqa: BLE001 - returned: recorded as this item's failure
                out.append(e)
        return out
    return process


def captions(outcomes: list[str | Exception]) -> list[Outcome]:
    return [o if isinstance(o, Exception) else {"caption": o} for o in outcomes]


# ---- collect audio (MUCaps, MUEdit) -------------------------------------------------------
def _collect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audio-dir", type=Path, help="folder of audio files (searched recursively)")
    p.add_argument("--youtube-ids", type=Path,
                   help="text list of YouTube ids or an AudioSet-style CSV (YTID, start, end); "
                        "needs yt-dlp, ffmpeg and network")


def _collect_items(args: argparse.Namespace) -> list[Item]:
    if args.audio_dir is not None:
        root = args.audio_dir.resolve()
        return [Item(rel, {"path": str(p), "root": str(root)})
                for rel, p in list_media(root, AUDIO_EXTENSIONS).items()]
    if args.youtube_ids is not None:
        reason = youtube_unavailable()
        if reason is not None:
            raise DatasetGenError(f"cannot download from YouTube: {reason}")
        root = (args.out / "audio").resolve()
        return [Item(f"{vid}.wav", {"video_id": vid, "start": s, "end": e, "root": str(root)})
                for vid, s, e in read_youtube_ids(args.youtube_ids)]
    raise DatasetGenError("pass --audio-dir FOLDER or --youtube-ids FILE")


def _collect_one(it: Item) -> dict[str, Any]:
    root = Path(it.data["root"])
    if "video_id" in it.data:
        path = download_clip(it.data["video_id"], it.data["start"], it.data["end"], root)
    else:
        path = Path(it.data["path"])
    return {"path": str(path), "file": it.key, "root": str(root),
            "clip_id": Path(it.key).stem, "seconds": round(audio_duration(path), 3)}


def collect_audio_step() -> Step:
    return Step("01_collect", "Collect audio clips from a folder or from YouTube ids.",
                _collect_items, lambda args: each(_collect_one), _collect_args, batch_size=16)


# ---- caption music -----------------------------------------------------------------------
def _music_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=AUDIO_CAPTIONER,
                   help="the music captioner: an m2ugen model (directory with m2ugen.json, or "
                        "a preset such as tiny) or a transformers audio-language model (hub "
                        f"id or directory; model types {', '.join(AUDIO_LANGUAGE_MODELS)}); "
                        f"told apart by its config (default {AUDIO_CAPTIONER})")
    p.add_argument("--prompt", default=MUSIC_PROMPT)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--clip-seconds", type=float, default=30.0,
                   help="caption the first N seconds of each clip")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="weights' dtype; auto: bf16 on GPUs that have it, else fp16; fp32 on CPU")
    add_trust_flag(p)


def caption_music_step(name: str, source: str, path_field: str = "path") -> Step:
    """Caption the audio at `record[path_field]` of each done record of step `source`."""
    def items(args: argparse.Namespace) -> list[Item]:
        return [Item(k, {"path": r[path_field]})
                for k, r in done_records(args.out, source, name).items()]

    def processor(args: argparse.Namespace) -> Processor:
        if args.max_new_tokens < 1 or args.clip_seconds <= 0:
            raise DatasetGenError("--max-new-tokens must be >= 1 and --clip-seconds > 0")
        captioner = music_captioner(args.model, resolve_device(args.device), args.dtype,
                                    args.prompt, args.max_new_tokens, args.clip_seconds,
                                    trust_remote_code=args.trust_remote_code)
        return lambda batch: captions(captioner([Path(it.data["path"]) for it in batch]))

    return Step(name, "Caption music with an audio-language model or an m2ugen model.", items,
                processor, _music_args)


# ---- caption images / video --------------------------------------------------------------
def caption_media_step(name: str, source: str, kind: str) -> Step:
    """Caption `input_path` of each done record of `source` (kind: image | video)."""
    default = IMAGE_CAPTIONER if kind == "image" else VIDEO_CAPTIONER

    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--captioner", default=default,
                       help=f"hub id or directory of the {kind} captioner (default {default})")
        p.add_argument("--max-new-tokens", type=int, default=40)
        p.add_argument("--num-beams", type=int, default=3)
        add_trust_flag(p)

    def items(args: argparse.Namespace) -> list[Item]:
        return [Item(k, {"path": r["input_path"]})
                for k, r in done_records(args.out, source, name).items()]

    def processor(args: argparse.Namespace) -> Processor:
        cls = ImageCaptioner if kind == "image" else VideoCaptioner
        captioner = cls(args.captioner, resolve_device(args.device), args.max_new_tokens,
                        args.num_beams, trust_remote_code=args.trust_remote_code)
        return lambda batch: captions(captioner([Path(it.data["path"]) for it in batch]))

    return Step(name, f"Caption {kind}s with {default} or another model.", items, processor,
                add_args)


# ---- instructions ------------------------------------------------------------------------
TEMPLATE_FIELDS = {"input_caption", "music_caption", "operation", "modality", "instruction"}


def conversation(r: Record, modality: str) -> dict[str, Any]:
    """One training record in the published MUImage / MUVideo / MUEdit schema."""
    return {"input_file": r["input_file"], "output_file": r["output_file"], "conversation": [
        {"from": "human", "value": r["instruction"], "input_modality": modality,
         "caption": r["input_caption"]},
        {"from": "gpt", "value": r["answer"], "caption": r["music_caption"],
         "output_modality": "audio"}]}


def instruction_step(name: str, dataset: str, modality: str, templates: Path,
                     items: Callable[[argparse.Namespace], list[Item]]) -> Step:
    """Ask the chat LLM for an instruction, then for the answer to it, per item.

    `items` give data with input_file, output_file, input_root, output_root,
    input_caption, music_caption (+ optional template fields such as operation).
    Final files: `<dataset>Instructions.json` and `<dataset>.dataset.json` (its dataset-spec
    entry for training: format, file, input_root, output_root).
    """
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--chat-model", default=CHAT_LLM, help="hub id or directory of an "
                       f"instruct causal LM (default {CHAT_LLM})")
        p.add_argument("--templates", type=Path, default=templates,
                       help="folder with instruction.txt and answer.txt prompt templates")
        p.add_argument("--max-new-tokens", type=int, default=128)
        add_trust_flag(p)

    def processor(args: argparse.Namespace) -> Processor:
        ask = load_template(args.templates / "instruction.txt", TEMPLATE_FIELDS - {"instruction"})
        answer = load_template(args.templates / "answer.txt", TEMPLATE_FIELDS)
        llm = ChatLLM(args.chat_model, resolve_device(args.device), args.max_new_tokens,
                      trust_remote_code=args.trust_remote_code)

        def process(batch: list[Item]) -> list[Outcome]:
            fields = [{"modality": modality, "operation": "", **it.data} for it in batch]
            instructions = llm([ask.format(**f) for f in fields])
            answers = llm([answer.format(**f, instruction=i)
                           for f, i in zip(fields, instructions, strict=True)])
            out: list[Outcome] = []
            for it, ins, ans in zip(batch, instructions, answers, strict=True):
                if not ins or not ans:
                    what = "instruction" if not ins else "answer"
                    out.append(ValueError(f"the chat LLM returned an empty {what}"))
                    continue
                keep = ("input_file", "output_file", "input_root", "output_root",
                        "input_caption", "music_caption")
                out.append({"instruction": ins, "answer": ans,
                            **{k: it.data[k] for k in keep}})
            return out
        return process

    def finalize(args: argparse.Namespace, records: dict[str, Record]) -> list[Path]:
        done = [r for r in records.values() if "error" not in r and "skipped" not in r]
        data = args.out / f"{dataset}Instructions.json"
        write_json(data, [conversation(r, modality) for r in done])
        # a dataset-spec entry of the training code (m2ugen.data: format "instruct")
        entry = {"format": "instruct", "file": str(data.resolve()),
                 "input_root": done[0]["input_root"] if done else None,
                 "output_root": done[0]["output_root"] if done else None}
        meta = args.out / f"{dataset}.dataset.json"
        write_json(meta, entry)
        return [data, meta]

    return Step(name, f"Write {dataset} instruction/answer pairs with a chat LLM.", items,
                processor, add_args, finalize, batch_size=8)
