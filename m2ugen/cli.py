"""`m2ugen …` sub-commands. User errors print one line on stderr and exit with code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from m2ugen.errors import M2UGenError

log = logging.getLogger("m2ugen")


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
    from m2ugen.tiny import build_tiny

    out = build_tiny(args.out, decoder=args.decoder, seed=args.seed)
    print(f"wrote the tiny {args.decoder} preset to {out}")
    return 0


def _check_attachment(path: str, flag: str) -> None:
    """The file exists and its type fits the flag (audio may come in a video container)."""
    from m2ugen.media import guess_modality

    if not Path(path).is_file():
        raise M2UGenError(f"{path}: file not found (given to --{flag})")
    kind = guess_modality(path)
    if kind != flag and not (flag == "audio" and kind == "video"):
        raise M2UGenError(f"{path}: looks like {'an' if kind == 'image' else 'a'} {kind} file "
                          f"but was given to --{flag}; attach it with --{kind}")


def _load_media(model, args: argparse.Namespace) -> dict:
    from m2ugen.media import load_audio, load_image, load_video

    media = {}
    if args.audio:
        media["audio"] = load_audio(args.audio, sr=model.encoders["audio"].sample_rate)
    if args.image:
        media["image"] = load_image(args.image)
    if args.video:
        media["video"] = load_video(args.video, num_frames=model.encoders["video"].num_frames)
    return media


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
    from m2ugen.chat import ChatSession, GenerationSettings
    from m2ugen.model import M2UGen
    from m2ugen.music import MusicSettings

    settings = GenerationSettings(max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    settings.validate()
    music = MusicSettings(music=args.music, condition=args.condition, seconds=args.seconds,
                          guidance=args.guidance, steps=args.steps, seed=args.seed,
                          num_candidates=args.num_candidates)
    music.validate()
    if args.out.suffix.lower() != ".wav":
        raise M2UGenError(f"--out {args.out}: music is written as WAV; use a .wav name")
    for flag in ("audio", "image", "video"):  # fail on a bad path before loading the model
        path = getattr(args, flag)
        if path:
            _check_attachment(path, flag)
    model = M2UGen.from_pretrained(args.model, device=args.device)
    model.llm.merge_for_inference()  # generation only: fold LoRA in
    session = ChatSession(model)
    media = _load_media(model, args)
    if args.prompt:
        _reply(session, args.prompt, media, settings, music, args.out)
        media = {}
    if args.interactive:
        _interactive(session, settings, music, media, args.out)
    elif not args.prompt:
        raise M2UGenError("no prompt given; pass PROMPT or use --interactive")
    return 0


_HELP = ("commands: /audio PATH, /image PATH, /video PATH attach media; /reset clears the "
         "conversation; /quit leaves")


def _interactive(session, settings, music, media: dict, out: Path) -> None:
    from m2ugen.media import load_audio, load_image, load_video

    print(_HELP)
    loaders = {
        "/audio": lambda p: ("audio", load_audio(p, sr=session.model.encoders["audio"]
                                                 .sample_rate)),
        "/image": lambda p: ("image", load_image(p)),
        "/video": lambda p: ("video", load_video(p, num_frames=session.model.encoders["video"]
                                                 .num_frames)),
    }
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return
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
                name, value = loaders[cmd](rest.strip())
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
    from m2ugen.train import train
    from m2ugen.train_config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    out = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"stage {cfg.stage} done: model directory {out} "
              f"(chat with it: m2ugen chat --model {out} ...)")
    return 0


def cmd_cache_features(args: argparse.Namespace) -> int:
    from m2ugen.data.cache import cache_features
    from m2ugen.train_config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    cache = cache_features(cfg)
    print(f"feature cache {cfg.feature_cache}: {len(cache)} entries")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except M2UGenError as e:
        print(f"m2ugen: error: {e}", file=sys.stderr)
        return 2
    except (PermissionError, NotADirectoryError, IsADirectoryError, FileNotFoundError,
            FileExistsError) as e:  # a path the user gave that cannot be written or read
        if args.verbose:
            raise
        print(f"m2ugen: error: {e.filename or ''}: {e.strerror or e}; choose another path "
              "(run with -v for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("m2ugen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
