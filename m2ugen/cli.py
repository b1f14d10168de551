"""`m2ugen …` sub-commands. User errors print one line on stderr and exit with code 2."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from safetensors import SafetensorError

from m2ugen.errors import M2UGenError, check_device, check_seed

log = logging.getLogger("m2ugen")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes (an unknown option, `--seed abc`) are one line like ours,
    not a usage block; `--help` still shows the usage. Sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"m2ugen: error: {message} (see `{self.prog} --help`)\n")


def flag_name(field: str) -> str:
    """A settings field as the CLI spells it: max_new_tokens → --max-new-tokens."""
    return "--" + field.replace("_", "-")


def setup_logging(verbose: bool) -> None:
    from transformers.utils import logging as hf_logging

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="m2ugen: %(message)s", stream=sys.stderr)
    if not verbose:  # library chatter (load reports, weight-loading bars) hides our output
        from diffusers.utils import logging as diffusers_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        # deprecation notices between transformers, peft and diffusers: not the user's to fix
        for module in ("transformers", "peft", "diffusers"):
            warnings.filterwarnings("ignore", category=FutureWarning, module=module)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from m2ugen.model import M2UGen
    from m2ugen.presets.tiny import build_tiny

    check_seed(args.seed, "--seed")
    out = build_tiny(args.out, decoder=args.decoder, seed=args.seed, force=args.force,
                     model_cls=M2UGen)
    print(f"wrote the tiny {args.decoder} preset to {out}")
    return 0


def _check_attachment(path: str, flag: str) -> None:
    """The file exists and its type fits the flag (audio may come in a video container)."""
    from m2ugen.media import guess_modality

    if Path(path).is_dir():
        raise M2UGenError(f"{path}: is a directory (given to --{flag}); pass a file in it")
    if not Path(path).is_file():
        raise M2UGenError(f"{path}: file not found (given to --{flag})")
    kind = guess_modality(path)
    if kind != flag and not (flag == "audio" and kind == "video"):
        raise M2UGenError(f"{path}: looks like {'an' if kind == 'image' else 'a'} {kind} file "
                          f"but was given to --{flag}; attach it with --{kind}")


def _read_media(args: argparse.Namespace, video_frames: int) -> dict:
    """Decode the attachments before the (slow) model load, so a bad file fails at once:
    audio at its own rate, video at the frame count the model config names."""
    from m2ugen.media import load_image, load_video, read_audio

    media = {}
    if args.audio:
        media["audio"] = read_audio(args.audio)
    if args.image:
        media["image"] = load_image(args.image)
    if args.video:
        media["video"] = load_video(args.video, num_frames=video_frames)
    return media


def _fit_media(model, media: dict, args: argparse.Namespace) -> dict:
    """Decoded attachments → what the loaded model's encoders take."""
    from m2ugen.media import load_video, resample_audio

    if "audio" in media:
        media["audio"] = resample_audio(*media["audio"], model.encoders["audio"].sample_rate)
    frames = model.encoders["video"].num_frames
    if "video" in media and len(media["video"]) != frames:  # config and encoder disagree
        media["video"] = load_video(args.video, num_frames=frames)
    return media


_MAX_NAME = 255  # bytes in a file name on Linux, macOS and Windows file systems


def _check_out(out: Path, writing: bool) -> None:
    """Refuse an --out that cannot be a WAV file before any slow work (where it can be
    written at all: `writing`, i.e. not --music never)."""
    if out.suffix.lower() != ".wav":
        raise M2UGenError(f"--out {out}: music is written as WAV; use a .wav name")
    if not writing:
        return
    if out.is_dir():
        raise M2UGenError(f"--out {out}: is a directory; name a file, e.g. {out / 'music.wav'}")
    # the file is written beside it as `.NAME.XXXXXXXX.wav.tmp` first: 18 bytes more
    if len(os.fsencode(out.name)) > _MAX_NAME - 18:
        raise M2UGenError(f"--out {out.name[:40]}...: the file name is too long "
                          f"({len(os.fsencode(out.name))} bytes; at most {_MAX_NAME - 18})")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the directories in between are created on writing
    if not parent.is_dir():
        raise M2UGenError(f"--out {out}: {parent} is a file, not a directory; choose another "
                          "path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise M2UGenError(f"--out {out}: {parent} is not writable; choose another path")


def _candidate_paths(out: Path, n: int) -> list[Path]:
    return [out] + [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(2, n + 1)]


def _reply(session, message: str, media: dict, settings, music, out: Path) -> None:
    from m2ugen.media import save_audio

    stream = session.stream(message, settings=settings, **media)
    for piece in stream:
        print(piece, end="", flush=True)
    print()
    result = stream.result
    rendered = session.render(result, music)
    if rendered is None:
        if music.music == "auto":
            log.info("no music: the reply has no [AUD] tokens (use --music always to force)")
        return
    paths = _candidate_paths(out, len(rendered.waveforms))
    for path, wave in zip(paths, rendered.waveforms, strict=True):
        save_audio(path, wave, rendered.sample_rate)
    used = ", ".join(result.inputs_used) or "text only"
    print(f"wrote {', '.join(map(str, paths))} ({rendered.seconds:g} s at "
          f"{rendered.sample_rate} Hz, condition={rendered.condition}, inputs: {used}, "
          f"seed {rendered.seed})", file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> int:
    from m2ugen.chat import ChatSession, GenerationSettings, check_utf8
    from m2ugen.model import M2UGen
    from m2ugen.music import MusicSettings
    from m2ugen.presets import resolve_model

    # every check that needs no model first: a mistake costs a second, not a model load
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    settings.validate(flag_name)
    music = MusicSettings(music=args.music, condition=args.condition, seconds=args.seconds,
                          guidance=args.guidance, steps=args.steps, seed=args.seed,
                          num_candidates=args.num_candidates)
    music.validate(flag_name)
    if not args.prompt and not args.interactive:
        raise M2UGenError("no prompt given; pass PROMPT or use --interactive")
    if args.prompt:
        check_utf8(args.prompt, "the prompt")
    _check_out(args.out, writing=music.music != "never")
    check_device(args.device, "--device")
    for flag in ("audio", "image", "video"):
        path = getattr(args, flag)
        if path:
            _check_attachment(path, flag)
    pending = _read_media(args, resolve_model(args.model, model_cls=M2UGen)[0].video_frames)
    model = M2UGen.from_pretrained(args.model, device=args.device,
                                   trust_remote_code=args.trust_remote_code)
    model.llm.merge_for_inference()  # generation only: fold LoRA in
    session = ChatSession(model)
    media = _fit_media(model, pending, args)
    if args.prompt:
        _reply(session, args.prompt, media, settings, music, args.out)
        media = {}
    if args.interactive:
        _interactive(session, settings, music, media, args.out)
    return 0


_HELP = ("commands: /audio PATH, /image PATH, /video PATH attach media; /reset clears the "
         "conversation; /quit leaves")


def _interactive(session, settings, music, media: dict, out: Path) -> None:
    from m2ugen.config import MODALITIES
    from m2ugen.media import load_media

    print(_HELP)
    # bytes that are not UTF-8 reach us as lone surrogates (a file name may legitimately
    # hold them; a message is refused in one line by ChatSession.stream) instead of an
    # exception that would also drop the rest of a piped input's buffer
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")
    spec = session.model.media_spec
    loaders = {f"/{m}": m for m in MODALITIES}
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return
        except UnicodeDecodeError as e:  # a stdin that could not be reconfigured
            print(f"error: the line is not valid UTF-8 text (byte 0x{e.object[e.start]:02x}); "
                  "type it again or set the terminal encoding to UTF-8", file=sys.stderr)
            continue
        if not line:
            continue
        cmd, _, rest = line.partition(" ")
        try:
            if cmd in ("/quit", "/exit"):
                return
            if cmd == "/reset":
                session.reset()
                media = {}
                print("(conversation cleared)")
            elif cmd in loaders:
                name = loaders[cmd]
                value = load_media(name, rest.strip(), spec)
                media[name] = value
                print(f"(attached {name}: {rest.strip()})")
            elif cmd.startswith("/"):
                print(_HELP)
            else:
                print("m2ugen> ", end="")
                _reply(session, line, media, settings, music, out)
                media = {}
        except M2UGenError as e:  # stay in the conversation after a user mistake
            print(f"error: {e}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    from m2ugen.training.config import load_train_config
    from m2ugen.training.loop import train

    cfg = load_train_config(args.config, args.overrides)
    args.written = cfg.out  # named by a write error that names no file
    out = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"stage {cfg.stage} done: model directory {out} "
              f"(chat with it: m2ugen chat --model {out} ...)")
    return 0


def cmd_cache_features(args: argparse.Namespace) -> int:
    from m2ugen.training.config import load_train_config
    from m2ugen.training.features import cache_features

    cfg = load_train_config(args.config, args.overrides)
    args.written = cfg.feature_cache
    cache = cache_features(cfg)
    print(f"feature cache {cfg.feature_cache}: {len(cache)} entries")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="m2ugen", description="A multimodal music assistant: chat about music, images "
        "and video; generate and edit music; train, convert and inspect models.",
        epilog="`m2ugen COMMAND --help` shows a command's options. The default model, tiny, "
        "is an untrained offline smoke-test model built on first use.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny", help="build the tiny offline preset (random weights)")
    p.add_argument("out", type=Path, help="output model directory")
    p.add_argument("--decoder", choices=["musicgen", "audioldm2"], default="musicgen")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty directory that is not an m2ugen model "
                        "directory (only the model's own files are written)")
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("chat", help="talk to a model about music, images and video")
    p.add_argument("prompt", nargs="?", help="the message (omit with --interactive)")
    p.add_argument("--model", default="tiny",
                   help="model directory or preset (tiny, musicgen-small, musicgen-medium, "
                        "audioldm2); default: tiny")
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
    p.add_argument("--out", type=Path, default=Path("m2ugen_music.wav"),
                   help="WAV file for the music (candidates 2.. get -2, -3 … suffixes)")
    p.add_argument("--seconds", type=float, default=10.0, help="music length")
    p.add_argument("--guidance", type=float, default=3.5, help="classifier-free guidance")
    p.add_argument("--steps", type=int, default=None,
                   help="AudioLDM2 denoising steps (default 100)")
    p.add_argument("--num-candidates", type=int, default=1, help="how many versions to render")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1")
    p.add_argument("--interactive", "-i", action="store_true", help="keep a conversation")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let a MERT whose config needs its own Python code (auto_map) run "
                        "that code; only for model directories you trust")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("train", help="run a training stage (alone or under torchrun)")
    p.add_argument("--config", required=True, help="configs/stage1.yaml, stage2 or stage3")
    p.add_argument("--resume", action="store_true", help="continue the run in out=")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override settings")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cache-features",
                       help="precompute encoder features and decoder targets (resumable)")
    p.add_argument("--config", required=True, help="the stage config whose data to cache")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override settings, e.g. feature_cache=cache/stage1")
    p.set_defaults(func=cmd_cache_features)

    from m2ugen import convert, info
    from m2ugen.data.synth import add_parser as add_synth

    add_synth(sub)
    convert.add_parser(sub)
    info.add_parser(sub)
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


if __name__ == "__main__":
    sys.exit(main())
