"""`m2ugen …` sub-commands: every option of every command is declared here, in
`build_parser`; the commands themselves live in `chat.py` (talking to a model) and
`commands.py` (the rest). User errors print one line on stderr and exit with code 2."""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from safetensors import SafetensorError

from m2ugen.cli.chat import cmd_chat
from m2ugen.cli.commands import (
    cmd_app,
    cmd_cache_features,
    cmd_convert,
    cmd_info,
    cmd_make_tiny,
    cmd_synth_data,
    cmd_train,
    cmd_train_decoder,
)
from m2ugen.cli.common import OneLineParser, flag_name, setup_logging
from m2ugen.cli.eval import cmd_eval
from m2ugen.cli.eval_synth import cmd_eval_synth
from m2ugen.errors import M2UGenError

__all__ = ["OneLineParser", "build_parser", "flag_name", "main", "setup_logging"]

_MODEL_HELP = ("model directory or preset (tiny, tiny-trained, tiny-stereo, tiny-melody, "
               "musicgen-small, musicgen-medium, musicgen-stereo-small|medium|large, "
               "musicgen-melody, audioldm2); default: tiny")
_TRUST_HELP = ("let a MERT whose config needs its own Python code (auto_map) run that code; "
               "only for model directories you trust")
_FORCE_HELP = ("write into a non-empty directory that is not an m2ugen model directory (only "
               "the model's own files are written; nothing else there is touched)")
_SCHEDULER_HELP = ("AudioLDM2 sampler: dpm++ (DPM-Solver++, the default) or ddim (the "
                   "published 200-step DDIM: --scheduler ddim); MusicGen has none")
_DTYPE_HELP = ("weights and compute: auto (default) = bf16 where the hardware computes it "
               "natively (GPUs with bf16, CPUs with AVX512-BF16 or AMX), fp16 on older GPUs, "
               "fp32 otherwise; the log says which and why")


def _add_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help=_DTYPE_HELP)


def _add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="talk to a model about music, images and video")
    p.add_argument("prompt", nargs="?", help="the message (omit with --interactive)")
    p.add_argument("--model", default="tiny", help=_MODEL_HELP)
    p.add_argument("--audio", help="music file to attach (wav, flac, ogg, mp3, m4a, …)")
    p.add_argument("--image", help="image file to attach")
    p.add_argument("--video", help="video file to attach")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--music", choices=["auto", "always", "never"], default="auto",
                   help="render music when the reply asks for it (auto), always, or never")
    p.add_argument("--condition", choices=["embedding", "text"], default="embedding",
                   help="condition the decoder on the projector output (embedding) or on the "
                        "reply text (text, the published behaviour)")
    p.add_argument("--out", type=Path, default=None,  # None: not given (--batch refuses it)
                   help="WAV file for the music (candidates 2.. get -2, -3 … suffixes; "
                        "default m2ugen_music.wav)")
    p.add_argument("--seconds", type=float, default=10.0, help="music length")
    p.add_argument("--guidance", type=float, default=3.5, help="classifier-free guidance")
    p.add_argument("--steps", type=int, default=None,
                   help="AudioLDM2 denoising steps (default 20 with dpm++, 200 with ddim)")
    p.add_argument("--scheduler", choices=["dpm++", "ddim"], default="dpm++",
                   help=_SCHEDULER_HELP)
    p.add_argument("--source", choices=["hear", "ignore"], default="hear",
                   help="with --audio, whether the music decoder also hears that music, so an "
                        "edit keeps the song (hear, default), or only the reply (ignore: the "
                        "published text-only edit, a new piece)")
    p.add_argument("--edit-strength", type=float, default=None, metavar="S",
                   help="how much of an edit is new, 0 < S <= 1 (default 0.6): "
                        "MusicGen continues the source's first (1 - S) of the length, "
                        "AudioLDM2 re-noises the source to S of its schedule; 1 = a new piece")
    p.add_argument("--num-candidates", type=int, default=1, help="how many versions to render")
    p.add_argument("--rerank", choices=["none", "clap"], default="none",
                   help="order the candidates by a judge's score, best first (clap: the CLAP "
                        "cosine of each with the text; needs --num-candidates 2 or more)")
    p.add_argument("--judge", metavar="ID_OR_DIR", default=None,
                   help="the CLAP model of --rerank clap: hub id or directory, or tiny (the "
                        "offline tiny one); default: the CLAP `m2ugen eval` scores with")
    p.add_argument("--rerank-against", choices=["request", "reply"], default="request",
                   help="what the judge compares the music with: your message (default) or "
                        "the reply text")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1")
    _add_dtype(p)
    p.add_argument("--interactive", "-i", action="store_true", help="keep a conversation")
    p.add_argument("--trust-remote-code", action="store_true", help=_TRUST_HELP)
    _add_decoding(p)
    p.add_argument("--batch", type=Path, metavar="FILE.jsonl",
                   help='answer every line of FILE ({"prompt": …, "audio"|"image"|"video": '
                        'path, "seed": n, "music": "auto|always|never"}); needs --out-dir')
    p.add_argument("--out-dir", type=Path, metavar="DIR",
                   help="with --batch: DIR/replies.jsonl (in order) and DIR/reply-NNNN.wav; the "
                        "same command again continues a stopped batch (DIR/batch.json)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="with --batch: requests the LLM answers at once (default 8)")
    p.set_defaults(func=cmd_chat)


def _add_decoding(p: argparse.ArgumentParser) -> None:
    """How the LLM decodes (chat and the app): cache, compilation, quantization."""
    p.add_argument("--cache", choices=["dynamic", "static"], default="dynamic",
                   help="KV cache: dynamic (grows with the reply) or static (preallocated; "
                        "what --compile needs)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the one-token decoding step (with --cache static; the "
                        "first reply waits for the compilation)")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="weight-only quantized LLM (torchao): int8 on CPU or GPU, int4 on CUDA "
                        "GPUs with --dtype bf16")


def _add_app(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="serve the chat app in the browser (Gradio)")
    p.add_argument("--model", default="tiny",
                   help="model directory or preset (default: tiny, an untrained smoke-test model)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    _add_dtype(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default loopback; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest upload accepted")
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="requests the loaded model serves at once (default 1; each one "
                        "holds its own activations and KV cache in memory)")
    p.add_argument("--examples-dir", type=Path, default=None, metavar="DIR",
                   help="demo media offered as examples (written there first when DIR does "
                        "not exist; gradio_app.py passes examples/media)")
    p.add_argument("--judge", metavar="ID_OR_DIR", default=None,
                   help="the CLAP model of the Rerank setting: hub id or directory, or tiny; "
                        "default: the CLAP `m2ugen eval` scores with (loaded when first used)")
    p.add_argument("--trust-remote-code", action="store_true", help=_TRUST_HELP)
    _add_decoding(p)
    p.set_defaults(func=cmd_app)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run a training stage (alone or under torchrun)")
    p.add_argument("--config", required=True, help="configs/stage1.yaml, stage2 or stage3")
    p.add_argument("--resume", action="store_true", help="continue the run in out=")
    p.add_argument("--dry-run", action="store_true",
                   help="load nothing: print the estimated memory per GPU for this config "
                        "(weights, trained tensors, gradients, optimizer, activations)")
    p.add_argument("--check", action="store_true",
                   help="only read the config and overrides and say what is wrong (the stage "
                        "scripts run this before torchrun, whose report of a failed rank "
                        "would bury a one-line mistake in a traceback)")
    p.add_argument("--gpus", type=int, default=1, help="with --dry-run: GPUs (ranks)")
    p.add_argument("--card", help="with --dry-run: GPU memory, e.g. 24GB; says whether it "
                                  "fits and which setting would")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override settings")
    p.set_defaults(func=cmd_train)


def _add_train_decoder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-decoder", help="fine-tune a model's music decoder (MusicGen or "
                       "AudioLDM2) on your own audio + captions, LoRA or full")
    p.add_argument("--config", required=True,
                   help="configs/decoder_musicgen.yaml or configs/decoder_audioldm2.yaml")
    p.add_argument("--resume", action="store_true", help="continue the run in out=")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override settings")
    p.set_defaults(func=cmd_train_decoder)


def _add_cache_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache-features",
                       help="precompute encoder features and decoder targets (resumable)")
    p.add_argument("--config", required=True, help="the stage config whose data to cache")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override settings, e.g. feature_cache=cache/stage1")
    p.set_defaults(func=cmd_cache_features)


def _add_synth_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth-data", help="write a small synthetic dataset in every format")
    p.add_argument("out", type=Path, help="output directory (gets dataset.yaml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-audio", type=int, default=12, help="music clips")
    p.add_argument("--n-images", type=int, default=6, help="images")
    p.add_argument("--n-videos", type=int, default=4, help="videos")
    p.set_defaults(func=cmd_synth_data)


def _add_make_tiny(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-tiny", help="build the tiny offline preset (random weights), or "
                       "with --trained the tiny-trained one")
    p.add_argument("out", type=Path, help="output model directory")
    p.add_argument("--decoder", choices=["musicgen", "audioldm2"], default="musicgen")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trained", action="store_true",
                   help="train it on synthetic data (the tiny-trained preset's recipe: a "
                        "small LLaMA pretrained on the data's text, then stages 1-3; "
                        "minutes on a CPU; musicgen only)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty directory that is not an m2ugen model "
                        "directory (only the model's own files are written)")
    p.set_defaults(func=cmd_make_tiny)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert-original",
                       help="convert a published M2UGen checkpoint.pth to a model directory")
    p.add_argument("checkpoint", type=Path, help="the published checkpoint.pth")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--decoder", choices=["musicgen", "audioldm2"], default=None,
                   help="decoder kind (default: detected from the projector's shape)")
    p.add_argument("--llm", help="LLaMA-2 hub id, HF dir or Meta-format dir "
                                 "(default meta-llama/Llama-2-7b-hf)")
    p.add_argument("--tokenizer", help="tokenizer of the LLM (default: the --llm one)")
    p.add_argument("--mert", help="MERT hub id or dir (default m-a-p/MERT-v1-330M)")
    p.add_argument("--vit", help="ViT hub id or dir (default google/vit-base-patch16-224)")
    p.add_argument("--vivit", help="ViViT hub id or dir (default google/vivit-b-16x2-kinetics400)")
    p.add_argument("--decoder-path", help="MusicGen / AudioLDM2 hub id or dir")
    p.add_argument("--force", action="store_true", help=_FORCE_HELP)
    p.add_argument("--skip-checks", action="store_true",
                   help="do not read the components' configs to check sizes (offline use)")
    p.set_defaults(func=cmd_convert)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a model directory's components and trained tensors")
    p.add_argument("dir", help="model directory")
    p.set_defaults(func=cmd_info)


_EVAL_TASKS = ("text2music", "image2music", "video2music", "edit", "musicqa")


def _eval_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", metavar="SET",
                   help="the metrics' embedding models: standard (hub ids: LAION CLAP, EnCodec "
                        "24 kHz, MERT-v1-95M, AST AudioSet, roberta-large), tiny (offline random "
                        "stand-ins) or a JSON file {role: hub id or dir}; default: tiny for the "
                        "tiny model, else standard")
    for role, what in (("clap", "CLAP (FAD-CLAP, CLAP score)"), ("encodec", "EnCodec (FAD)"),
                       ("mert", "MERT (FAD)"), ("ast", "AudioSet classifier (KL, IS)"),
                       ("bertscore", "BERTScore encoder")):
        p.add_argument(f"--{role}", metavar="ID_OR_DIR", help=f"{what} model, overriding the set")
    p.add_argument("--metrics", metavar="A,B",
                   help="only these metrics (comma-separated names as in results.json)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--seed", type=int, default=0,
                   help="item i is sampled with seed+i; also seeds the Inception Score splits")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="the paper's evaluation: a model on a task, a folder of "
                       "music, or a table of earlier runs")
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK",
                             help=f"{', '.join(_EVAL_TASKS)}, folder, report or synth")
    for name in _EVAL_TASKS:
        t = tasks.add_parser(name, help=f"generate for the {name} records of --data and "
                             "score them (resumable)")
        t.add_argument("--model", action="append", metavar="DIR_OR_PRESET",
                       help=_MODEL_HELP + "; repeat to compare several")
        t.add_argument("--data", required=True, metavar="FILE",
                       help="the task's JSON file in the published format, or a dataset spec "
                            "YAML (m2ugen synth-data writes both)")
        t.add_argument("--root", metavar="DIR",
                       help="where the JSON file's media are (default: its folder)")
        t.add_argument("--reference-root", metavar="DIR",
                       help="where instruct records' output_file music is (default: --root)")
        t.add_argument("--out", type=Path, metavar="DIR",
                       help=f"results: DIR/<model>/ per model and DIR/table.md (default "
                            f"eval_results/{name})")
        t.add_argument("--limit", type=int, metavar="N", help="only the first N items")
        t.add_argument("--batch-size", type=int, default=8, metavar="N",
                       help="items whose music is rendered in one decoder call (default 8)")
        t.add_argument("--seconds", type=float, default=10.0, help="music length (default 10)")
        t.add_argument("--guidance", type=float, default=3.5)
        t.add_argument("--steps", type=int, default=None,
                       help="AudioLDM2 denoising steps (default 20 with dpm++, 200 with ddim)")
        t.add_argument("--scheduler", choices=["dpm++", "ddim"], default="dpm++",
                       help=_SCHEDULER_HELP)
        t.add_argument("--condition", choices=["embedding", "text"], default="embedding",
                       help="decoder conditioning: projector output (default) or reply text")
        if name == "edit":
            t.add_argument("--source", choices=["hear", "ignore"], default="hear",
                           help="the decoder hears each item's source music (hear, default: "
                                "the edit keeps the song) or not (ignore: the published "
                                "text-only edit); compare the two runs' chroma")
            t.add_argument("--edit-strength", type=float, default=None, metavar="S",
                           help="how much of each edit is new, 0 < S <= 1 (default 0.6)")
        t.add_argument("--max-new-tokens", type=int, default=256)
        t.add_argument("--temperature", type=float, default=0.6)
        t.add_argument("--top-p", type=float, default=0.8)
        t.add_argument("--skip-bad", action="store_true",
                       help="evaluate without bad records (listed in results.json) instead of "
                            "stopping at the first")
        t.add_argument("--trust-remote-code", action="store_true", help=_TRUST_HELP)
        _add_dtype(t)
        _eval_models(t)
    f = tasks.add_parser("folder", help="score a folder of WAVs against references (any "
                         "system's outputs)")
    f.add_argument("--generated", type=Path, required=True, metavar="DIR",
                   help="generated clips, each named like its reference")
    f.add_argument("--reference", type=Path, required=True, metavar="DIR",
                   help="reference clips")
    f.add_argument("--captions", type=Path, metavar="FILE",
                   help="MUCaps-format JSON {file name: caption} for the CLAP score")
    f.add_argument("--sources", type=Path, metavar="DIR",
                   help="what each clip should follow (same names): an edit's source or a "
                        "melody prompt, for the chroma, melody and note-F1 scores")
    f.add_argument("--label", help="the row name in tables (default: the --generated folder)")
    f.add_argument("--out", type=Path, metavar="DIR",
                   help="results: DIR/<label>/ and DIR/table.md (default eval_results/folder)")
    _eval_models(f)
    s = tasks.add_parser("synth", help="does the model answer from its inputs? questions "
                         "and music requests on held-out synthetic data (true / no / shuffled "
                         "inputs)")
    s.add_argument("--model", default="tiny-trained", help=_MODEL_HELP.replace(
        "default: tiny", "default: tiny-trained"))
    s.add_argument("--data", type=Path, metavar="DIR",
                   help="a `m2ugen synth-data` directory (default: one written with --seed)")
    s.add_argument("--seed", type=int, default=1,
                   help="seed of the held-out set; not the one the model was trained on "
                        "(tiny-trained: 0)")
    s.add_argument("--n", type=int, default=100, help="clips, images and videos (default 100)")
    s.add_argument("--out", type=Path, default=Path("eval_results/synth"), metavar="DIR",
                   help="results.json (every reply) and table.md (default eval_results/synth)")
    s.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    s.add_argument("--trust-remote-code", action="store_true", help=_TRUST_HELP)
    _add_dtype(s)
    s.set_defaults(func=cmd_eval_synth)
    r = tasks.add_parser("report", help="one Markdown table (and plot) comparing result folders")
    r.add_argument("results", nargs="+", type=Path, metavar="DIR",
                   help="run folders, folders of runs (an --out of eval) or results.json files")
    r.add_argument("--out", type=Path, metavar="FILE.md",
                   help="write the table here and the plot beside it (.png); default: print")
    p.set_defaults(func=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    """Every sub-command and its options (the commands appear in `--help` in this order)."""
    parser = OneLineParser(
        prog="m2ugen", description="A multimodal music assistant: chat about music, images "
        "and video; generate and edit music; train, convert and inspect models.",
        epilog="`m2ugen COMMAND --help` shows a command's options. The default model, tiny, "
        "is an untrained offline smoke-test model built on first use.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_make_tiny, _add_chat, _add_app, _add_train, _add_train_decoder,
                _add_cache_features,
                _add_synth_data, _add_convert, _add_info, _add_eval):
        add(sub)
    return parser


# OSErrors that are about the environment (a path, a disk, permissions), not a bug
_PATH_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
    errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG,
    errno.ELOOP, errno.ENOTEMPTY, errno.EXDEV, errno.EIO, errno.EBUSY})
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# atomic writes go through `.NAME.XXXXXXXX[.ext].tmp` files and model directories are built
# as `.NAME.m2ugen-build-PID-…` beside a new one or `.m2ugen-build-PID-…` inside an old one
_TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}(?:\.[A-Za-z0-9]+)*\.tmp$")
_BUILD_DIR = re.compile(r"^\.(?P<name>.+?)\.m2ugen-(?:build|old)-\d+-")


def _user_path(filename: str) -> str:
    """The user's own path behind one of our temporary names (theirs is what they know)."""
    parts: list[str] = []
    for part in Path(filename).parts:
        if part.startswith((".m2ugen-build-", ".m2ugen-old-")):
            break  # inside a directory being rebuilt: that directory is the user's path
        if match := _BUILD_DIR.match(part):
            parts.append(match.group("name"))
            break  # a new directory being built
        match = _TEMP_FILE.match(part)
        parts.append(match.group("name") if match else part)
    return str(Path(*parts)) if parts else filename


def _os_error_line(code: int, reason: str, filename, args: argparse.Namespace) -> str:
    path = filename if isinstance(filename, str) else None
    path = _user_path(path) if path else (getattr(args, "written", None)
                                          or getattr(args, "out", None))
    fix = ("free some disk space or choose another path" if code in _DISK_FULL
           else "choose another path")
    where = f"{path}: " if path else ""
    return f"m2ugen: error: {where}{reason}; {fix} (run with -v for the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except M2UGenError as e:
        print(f"m2ugen: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave that cannot be written or read
        if args.verbose or e.errno not in _PATH_ERRNOS:
            raise
        print(_os_error_line(e.errno, e.strerror or str(e), e.filename, args), file=sys.stderr)
        return 2
    except SafetensorError as e:  # safetensors reports a failed write as "(os error 28)"
        code = re.search(r"\(os error (\d+)\)", str(e))
        if args.verbose or code is None or int(code.group(1)) not in _PATH_ERRNOS:
            raise
        print(_os_error_line(int(code.group(1)), os.strerror(int(code.group(1))), None, args),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("m2ugen: interrupted", file=sys.stderr)
        return 130
